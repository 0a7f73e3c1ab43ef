"""The warm start compiles what the build runs: after it, a build on the default catalogue
compiles none of the project's kernels (numba.typed's list helpers are never cached by Numba, so
every process compiles those); the scaled geometry keeps the module costs' ratios."""

import os
import subprocess
import sys

import pytest

from ruv_assets.catalogue.config import ModelGeometry
from ruv_assets.orchestration.warm_start import scaled_geometry

BUILD_AND_COUNT = """
from numba.core import event
from dagster import DagsterInstance
from ruv_assets.orchestration.build_all import build_all

compiled = []
class Count(event.Listener):
    def on_start(self, ev):
        func = ev.data["dispatcher"].py_func
        if func.__module__.startswith("ruv_kernels"):  # numba.typed's own helpers are never cached
            compiled.append(f"{func.__module__}.{func.__qualname__}")
    def on_end(self, ev):
        pass

with event.install_listener("numba:compile", Count()):
    with DagsterInstance.get() as instance:
        report = build_all(instance, log=lambda _m: None, warm=False)
assert not report.failed, report.failed
print("COMPILED", sorted(set(compiled)))
"""

WARM = """
from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
from ruv_assets.orchestration.warm_start import stamp_path, warm_start
assert warm_start(current_catalogue(), current_geometry(), log=print)
assert stamp_path().exists()
assert not warm_start(current_catalogue(), current_geometry())  # the stamp: a warm cache is left alone
"""


def test_scaled_geometry_divides_every_width_by_one_factor():
    small = scaled_geometry(ModelGeometry(hidden_size=768, intermediate_size=3072, num_layers=2), 16)
    assert (small.hidden_size, small.intermediate_size, small.num_layers) == (16, 64, 2)  # 768 / 48: every width still >= rank 16
    gqa = ModelGeometry(hidden_size=576, intermediate_size=1536, num_layers=30, num_attention_heads=9, num_key_value_heads=3)
    small = scaled_geometry(gqa, 8)
    factor = 576 // small.hidden_size
    assert factor > 1 and (small.intermediate_size, small.q_size, small.kv_size) == (1536 // factor, 576 // factor, 192 // factor)
    assert min(small.hidden_size, small.kv_size) >= 8


@pytest.mark.slow
def test_after_the_warm_start_the_build_compiles_nothing(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "RUV_HOME": str(tmp_path / "ruv"), "PYTHONWARNINGS": "ignore"}
    env.pop("RUV_CATALOGUE", None)
    (tmp_path / "dagster").mkdir()
    warm = subprocess.run([sys.executable, "-c", WARM], env=env, capture_output=True, text=True, timeout=900)
    assert warm.returncode == 0, warm.stderr[-3000:]
    build = subprocess.run([sys.executable, "-c", BUILD_AND_COUNT], env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "COMPILED []" in build.stdout, build.stdout[-2000:]
