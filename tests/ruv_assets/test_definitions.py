"""The code location as Dagster and its CLI see it: what is defined, and the commands a user runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DefaultScheduleStatus, DefaultSensorStatus

from ruv_assets.definitions import defs

DAGSTER = str(Path(sys.executable).with_name("dagster"))
RUV = str(Path(sys.executable).with_name("ruv"))
ROOT = Path(__file__).resolve().parents[2]


def test_everything_is_defined():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"adapter_entry", "composite_entry", "base_model", "capture_teacher", "capture_corpus", "preset_adapter",
                    "synthetic_dataset", "trained_adapter", "merged_adapter", "served_adapter", "serving_model", "traffic",
                    "adapted_adapter"}
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {("trained_adapter", n) for n in ("weights_finite", "beats_zero_adapter", "near_noise_floor", "removes_teacher_kl")} | {
        ("merged_adapter", n) for n in ("weights_finite", "beats_zero_adapter", "retention_within_bounds")} | {
        ("adapted_adapter", n) for n in ("weights_finite", "improves_heldout_traffic", "keeps_original_corpus")}
    for job in ("train_job", "adapt_job", "merge_job", "promote_job"):
        assert defs.resolve_job_def(job).name == job
    for sensor in ("catalogue_sensor", "merge_sensor", "adaptation_sensor", "promotion_sensor"):
        assert defs.resolve_sensor_def(sensor).default_status == DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("retrain_schedule").default_status == DefaultScheduleStatus.STOPPED
    for key in ("preset_adapter", "synthetic_dataset", "trained_adapter", "adapted_adapter", "merged_adapter", "served_adapter"):
        assert graph.get(AssetKey(key)).code_version, f"{key} has a code_version"
    assert set(defs.resources) >= {"store", "store_io", "slots", "geometry"}


def test_resources_follow_environment_at_use(monkeypatch, tmp_path):
    from ruv_resources.dagster_resources import SlotsResource, StoreResource
    from ruv_assets.catalogue.geometry import GeometryResource

    monkeypatch.setenv("RUV_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("RUV_NUM_LAYERS", "3")
    assert StoreResource().store().root == tmp_path / "h"
    assert SlotsResource().slot("coder").path == tmp_path / "h" / "slots" / "coder"
    assert GeometryResource().geometry().num_layers == 3
    assert GeometryResource(num_layers=5).geometry().num_layers == 5
    assert StoreResource(root=str(tmp_path / "x")).store().root == tmp_path / "x"


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_materialise_and_sensor_preview(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "RUV_HOME": str(tmp_path / "ruv")}
    synced = subprocess.run([RUV, "run-all", "--sync-only"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert synced.returncode == 0 and "+adapters:coder,researcher,security,architect,reviewer" in synced.stdout, synced.stderr[-2000:]
    done = subprocess.run([DAGSTER, "asset", "materialize", "-m", "ruv_assets.definitions", "--select", "preset_adapter",
                           "--partition", "reviewer"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RUN_SUCCESS" in done.stderr + done.stdout
    [version] = [p for p in (tmp_path / "ruv" / "preset_adapter" / "reviewer").iterdir() if p.is_dir()]
    assert (version / "adapter_model.safetensors").is_file() and (version / "adapter_config.json").is_file()
    preview = subprocess.run([DAGSTER, "sensor", "preview", "-m", "ruv_assets.definitions", "promotion_sensor"],
                             env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert preview.returncode == 0, preview.stderr[-2000:]
    assert "nothing new to promote" in preview.stdout + preview.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_run_all_fills_every_slot(tmp_path):
    """`ruv run-all` (what `make run` does, no daemon): every stage for every partition, on a small model."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(
        "geometry: {hidden_size: 96, intermediate_size: 160, num_layers: 1}\n"
        "adapters:\n  - {name: docs, rank: 4, alpha: 8, target_modules: [q_proj, v_proj], tags: [docs]}\n"
        "composites:\n  - {name: pair, method: weighted, sources: [coder, docs], weights: [0.5, 0.5]}\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "RUV_HOME": str(tmp_path / "ruv"), "RUV_CATALOGUE": str(catalogue)}
    done = subprocess.run([RUV, "run-all"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    slots = sorted(p.name for p in (tmp_path / "ruv" / "slots").iterdir())
    assert slots == sorted(["coder", "researcher", "security", "architect", "reviewer", "docs", "pair"])
    for name in slots:
        assert (tmp_path / "ruv" / "slots" / name / "active" / "adapter_model.safetensors").is_file()
