"""What `pip install ruv-assets` puts into site-packages: the folders kernels/, resources/ and
ruv_assets/ as `ruv_kernels`, `ruv_resources` and `ruv_assets`, beside Hugging Face's `kernels`
(which owns that top-level name) without either overwriting the other; and Numba's on-disk cache
working from the installed files as from the editable checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder in the repository -> the name it installs as
FOLDERS = {"kernels": "ruv_kernels", "resources": "ruv_resources", "ruv_assets": "ruv_assets"}
# Hugging Face's kernel-hub package, pinned so the run is the same each time.
HF_KERNELS = "kernels==0.17.2"
# What importing every numeric and disk module needs (ours, at the versions this venv runs).
NUMERIC_DEPS = ("numpy", "numba", "llvmlite", "scipy", "safetensors")
# Modules that need the Dagster or the capture (PyTorch) extras, not installed in the fresh venv.
NEEDS_EXTRAS = ("ruv_resources.dagster_resources", "ruv_resources.capture.")


def _folder_packages() -> set[str]:
    """Every package in the repository's three folders, under its installed name."""
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_pyproject_lists_every_package_under_its_installed_name():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    assert sorted(tool["packages"]) == sorted(_folder_packages())


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without this venv's traces, so a subprocess sees only its own interpreter."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NUMBA_CACHE_DIR", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def _run(args, cwd, env=None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env or _clean_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build leaves build/ and *.egg-info behind)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", src], cwd=root)
    (built,) = (root / "dist").glob("ruv_assets-*.whl")
    return built


def _norm(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _top_level(paths) -> set[str]:
    """Top-level names a list of RECORD paths installs into site-packages."""
    names = set()
    for path in paths:
        first = path.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")) or first in ("..", "__pycache__"):
            continue
        names.add(first[:-3] if first.endswith(".py") else first)
    return names


@pytest.mark.slow
def test_wheel_holds_every_source_file_under_the_installed_names(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = set(whl.read(top_level).decode().split())
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        recorded = [line.split(",", 1)[0] for line in whl.read(record).decode().splitlines() if line]
    assert declared == set(FOLDERS.values())
    assert _top_level(recorded) == set(FOLDERS.values())
    for folder, name in FOLDERS.items():
        for source in (REPO / folder).rglob("*.py"):
            assert f"{name}/{source.relative_to(REPO / folder).as_posix()}" in recorded
    assert "ruv_assets/catalogue/catalogue.yaml" in recorded


# Run by the fresh venv's interpreter from a directory outside the repository.
_PROBE = r"""
import importlib, json, pkgutil, sys
from importlib import metadata
import kernels, ruv_kernels, ruv_resources, ruv_assets
needs_extras = tuple(sys.argv[1].split(","))
imported = []
for pkg in (ruv_kernels, ruv_resources):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not info.name.startswith(needs_extras):
            importlib.import_module(info.name)
            imported.append(info.name)
owners = {}
for dist in metadata.distributions():
    for name in {str(f).split("/", 1)[0] for f in dist.files or ()}:
        owners.setdefault(name, []).append(dist.metadata["Name"])
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (kernels, ruv_kernels, ruv_resources, ruv_assets)},
    "kernels_dist": metadata.distribution("kernels").metadata["Name"],
    "kernels_api": [n for n in ("get_kernel", "has_kernel") if hasattr(kernels, n)],
    "imported": imported,
    "owners": owners,
    "sys_path": sys.path,
}))
"""

_CACHE_PROBE = r"""
import json, numpy as np
from ruv_kernels.finite import all_finite
assert all_finite(np.ones(5)) and not all_finite(np.array([1.0, np.nan]))
stats = all_finite.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "cache_path": stats.cache_path}))
"""


def _cache_runs(python, cwd, env) -> list[dict]:
    """The cache statistics of one small cached kernel in two fresh processes, one after the other."""
    return [json.loads(_run([python, "-c", _CACHE_PROBE], cwd=cwd, env=env)) for _ in range(2)]


@pytest.mark.slow
def test_wheel_installs_beside_hugging_face_kernels_and_both_import(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # a plain venv: nothing of this one's site-packages
    python = env_dir / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    numeric = [f"{d}=={metadata.version(d)}" for d in NUMERIC_DEPS]
    _run([*pip, "--no-deps", wheel, HF_KERNELS, *numeric], cwd=tmp_path)
    # `import kernels` imports huggingface_hub and what that needs: let pip add HF's own
    # dependencies (not ours: ruv-assets is already installed, and stays without its Dagster).
    _run([*pip, HF_KERNELS], cwd=tmp_path)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).strip()).resolve()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    found = json.loads(_run([python, "-c", _PROBE, ",".join(NEEDS_EXTRAS)], cwd=outside))

    files = {name: Path(path).resolve() for name, path in found["files"].items()}
    assert files["kernels"] == site / "kernels" / "__init__.py"  # Hugging Face's, not this repository's
    assert found["kernels_dist"] == "kernels" and found["kernels_api"] == ["get_kernel", "has_kernel"]
    for name in FOLDERS.values():
        assert files[name] == site / name / "__init__.py"
    assert not any(str(REPO) in entry for entry in found["sys_path"])
    assert {"ruv_kernels.train", "ruv_kernels.merge.registry", "ruv_resources.slot",
            "ruv_resources.slot_reader", "ruv_resources.store"} <= set(found["imported"])
    # No top-level name in site-packages is claimed by two distributions; ours are exactly three.
    shared = {name: dists for name, dists in found["owners"].items()
              if len(set(dists)) > 1 and name not in ("..", "__pycache__")}
    assert shared == {}
    ours = _top_level(n for n, dists in found["owners"].items() if any(_norm(d) == "ruv-assets" for d in dists))
    assert ours == set(FOLDERS.values())
    assert found["owners"]["kernels"] == ["kernels"]

    # Numba's cache=True from the installed files: compiled once, loaded by the next process
    # (no NUMBA_CACHE_DIR, so the cache sits in site-packages as on a user's machine).
    first, second = _cache_runs(python, outside, _clean_env())
    assert (first["misses"], second["hits"], second["misses"]) == (1, 1, 0)
    assert Path(second["cache_path"]).resolve().is_relative_to(site / "ruv_kernels")


@pytest.mark.slow
def test_numba_cache_works_from_the_editable_install(tmp_path):
    """This venv's editable install maps the names onto the folders; the cache keys on the files."""
    cache = tmp_path / "numba"
    first, second = _cache_runs(sys.executable, tmp_path, _clean_env(NUMBA_CACHE_DIR=str(cache)))
    assert (first["misses"], second["hits"], second["misses"]) == (1, 1, 0)
    assert any(cache.rglob("finite.all_finite-*.nbi"))
