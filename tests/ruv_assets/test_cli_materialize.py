"""`ruv materialize` on a fresh instance, and the one line plain `dagster asset materialize` prints
there instead of Dagster's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ruv_assets.orchestration.unsynced import requested_partition, selection_arguments

BIN = Path(sys.executable).parent
CATALOGUE = "geometry: {hidden_size: 32, intermediate_size: 48, num_layers: 1}\nadapters: []\ncomposites: []\n"


@pytest.fixture
def fresh(tmp_path):
    """A fresh instance (an empty DAGSTER_HOME with a dagster.yaml), a fresh store, a small catalogue."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(CATALOGUE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUV_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), RUV_HOME=str(tmp_path / "ruv"), RUV_CATALOGUE=str(catalogue))
    return env, tmp_path


def run(env, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=300)


def test_requested_partition_reads_only_dagster_asset_materialize():
    assert requested_partition(["/x/dagster", "asset", "materialize", "--select", "a", "--partition", "coder"]) == "coder"
    assert requested_partition(["dagster", "asset", "materialize", "--partition=coder"]) == "coder"
    assert requested_partition(["dagster", "asset", "materialize", "--select", "a"]) is None
    assert requested_partition(["dagster", "dev", "--partition", "coder"]) is None
    assert requested_partition(["pytest", "asset", "materialize", "--partition", "coder"]) is None
    assert selection_arguments(["dagster", "asset", "materialize", "-m", "ruv_assets.definitions", "--select", "a", "--partition", "x"]) == [
        "--select", "a", "--partition", "x"]


def test_plain_dagster_on_a_fresh_instance_says_what_to_run(fresh):
    env, _ = fresh
    done = run(env, BIN / "dagster", "asset", "materialize", "-m", "ruv_assets.definitions", "--select", "preset_adapter", "--partition", "coder")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = [l for l in done.stderr.splitlines() if l.startswith("ruv:")]
    assert line == [f"ruv: partition 'coder' does not exist on the instance at {env['DAGSTER_HOME']} yet (its catalogue was never synced): "
                    "run `ruv materialize --select preset_adapter --partition coder` (it syncs the catalogue first), or `ruv run-all --sync-only` once"]


def test_ruv_materialize_syncs_then_hands_over_to_dagster(fresh):
    env, tmp = fresh
    done = run(env, BIN / "ruv", "materialize", "--select", "preset_adapter", "--partition", "coder")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stderr + done.stdout
    assert list((tmp / "ruv" / "preset_adapter" / "coder").glob("*/adapter_model.safetensors"))
    # synced now: plain dagster works on the same instance too
    again = run(env, BIN / "dagster", "asset", "materialize", "-m", "ruv_assets.definitions", "--select", "preset_adapter", "--partition", "reviewer")
    assert again.returncode == 0, again.stderr[-3000:]


def test_ruv_materialize_refuses_an_unknown_partition_in_one_line(fresh):
    env, tmp = fresh
    done = run(env, BIN / "ruv", "materialize", "--select", "preset_adapter", "--partition", "nope")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("ruv materialize: error: partition 'nope' is not in ")
    assert not (tmp / "ruv").exists()
    assert not (tmp / "dagster_home" / "storage").exists()  # nothing written to the instance either


def test_ruv_materialize_needs_dagster_home(fresh):
    env, _ = fresh
    env.pop("DAGSTER_HOME")
    done = run(env, BIN / "ruv", "materialize", "--select", "preset_adapter", "--partition", "coder")
    assert done.returncode == 2
    assert "DAGSTER_HOME is not set" in done.stderr
