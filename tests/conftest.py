"""Shared fixtures: a small geometry so tests are fast, and isolated RUV_HOME/DAGSTER_HOME."""

import os

# Compile once per machine, not once per test process; absolute, because CLI tests run elsewhere.
# Set before numba is imported: it reads NUMBA_CACHE_DIR then.
os.environ["NUMBA_CACHE_DIR"] = os.path.abspath(
    os.environ.get("NUMBA_CACHE_DIR") or os.path.join(os.path.dirname(os.path.dirname(__file__)), ".numba_cache")
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ruv_kernels.adapter import AdapterSpec, LoraAdapter  # noqa: E402


@pytest.fixture
def small_spec() -> AdapterSpec:
    return AdapterSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"), hidden_size=24, intermediate_size=40, num_layers=2, dropout=0.05)


def random_adapter(spec: AdapterSpec, seed: int = 0) -> LoraAdapter:
    """An initialised adapter whose B is non-zero, so forwards and deltas are non-trivial."""
    adapter = LoraAdapter.initialise(spec, seed)
    rng = np.random.default_rng(seed + 1)
    for key in adapter.keys():
        adapter.B[key] = rng.standard_normal(adapter.B[key].shape).astype(np.float32)
    return adapter


@pytest.fixture
def ruv_home(tmp_path, monkeypatch):
    home = tmp_path / "ruv"
    monkeypatch.setenv("RUV_HOME", str(home))
    return home
