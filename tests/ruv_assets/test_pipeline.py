"""The asset graph end to end on a real (temporary) Dagster instance, at the default geometry:
train coder and reviewer, merge code_review, let the sensor decide, promote, then retrain, break
things on purpose and check what the sensor, the checks and the staleness say."""

import base64
import datetime
import re
import shutil
import warnings

import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance, build_schedule_context, build_sensor_context, instance_for_test
from dagster._core.definitions.data_version import CachingStaleStatusResolver
from dagster._core.loader import LoadingContextForTest
from safetensors.numpy import save_file

import ruv_assets.catalogue.catalogue as catalogue_module
from ruv_resources.peft_format import load_adapter
from ruv_resources.slot import Slot, slots_root
from ruv_resources.slot_reader import SlotReader
from ruv_resources.store import ArtifactStore
from ruv_assets.orchestration.build_all import build_all, observe_catalogue
from ruv_assets.definitions import defs
from ruv_assets.orchestration.schedules import retrain_schedule
from ruv_assets.orchestration.promotion_sensor import checks_passed, promotion_sensor

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
warnings.filterwarnings("ignore", category=Warning, module="dagster")
ADAPTERS, COMPOSITES = ["coder", "reviewer"], ["code_review"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """Build once into `work/`, then keep a copy of the whole state (instance + RUV_HOME)."""
    home = tmp_path_factory.mktemp("pipeline")
    work = home / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUV_HOME", str(work / "ruv"))
        mp.delenv("RUV_SLOTS", raising=False)
        (work / "dagster").mkdir(parents=True)
        with instance_for_test(temp_dir=str(work / "dagster")) as instance:
            report = build_all(instance, adapters=ADAPTERS, composites=COMPOSITES, log=lambda _: None)
    shutil.copytree(work, home / "snapshot", symlinks=True)
    return work, home / "snapshot", report


@pytest.fixture
def built(snapshot, monkeypatch):
    """Each test starts from the freshly built state, whatever ran before it: `work/` is restored
    from the snapshot (same paths, so the recorded metadata stays true) and reopened."""
    work, saved, report = snapshot
    shutil.rmtree(work)
    shutil.copytree(saved, work, symlinks=True)
    monkeypatch.setenv("RUV_HOME", str(work / "ruv"))
    monkeypatch.delenv("RUV_SLOTS", raising=False)
    with instance_for_test(temp_dir=str(work / "dagster")) as instance:
        yield instance, report, ArtifactStore(work / "ruv")


def latest(instance: DagsterInstance, asset: str, partition: str):
    records = instance.fetch_materializations(AssetKey(asset), limit=50).records
    record = next(r for r in records if r.asset_materialization.partition == partition)
    return record, {k: v.value for k, v in record.asset_materialization.metadata.items()}


def run_job(instance, job, partition, run_config=None):
    return defs.resolve_job_def(job).execute_in_process(partition_key=partition, instance=instance, run_config=run_config or {}, raise_on_error=False)


def test_build_all_succeeded(built):
    _, report, _ = built
    assert not report.failed
    assert [(j, p) for j, p, _, _ in report.runs] == [
        ("train_job", "coder"), ("train_job", "reviewer"), ("merge_job", "code_review"),
        ("promote_job", "code_review"), ("promote_job", "coder"), ("promote_job", "reviewer"),
    ]


@pytest.mark.parametrize("name", ADAPTERS)
def test_trained_adapter_learns_the_task(built, name):
    instance, _, store = built
    record, meta = latest(instance, "trained_adapter", name)
    for key in ("path", "train_loss", "val_loss", "noise_floor", "delta_rel_error", "epochs_run", "early_stopped", "loss_curve", "history"):
        assert key in meta, key
    assert meta["val_loss"] <= 1.10 * meta["noise_floor"], "within 10% of the noise floor"
    assert meta["delta_rel_error"] < 0.1
    assert meta["val_loss"] < 0.01 * meta["zero_adapter_val_loss"]
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", meta["loss_curve"]).group(1))
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert meta["history"].count("\n") >= meta["epochs_run"] + 1
    assert checks_passed(instance, record.run_id, "trained_adapter", name)
    loaded = load_adapter(meta["path"])
    assert loaded.adapter.spec.rank == {"coder": 16, "reviewer": 8}[name] and any(b.any() for b in loaded.adapter.B.values())
    assert meta["path"] == str(store.get("trained_adapter", name).path)


def test_merged_adapter_records_sources_and_retention(built):
    instance, _, store = built
    record, meta = latest(instance, "merged_adapter", "code_review")
    assert meta["method"] == "weighted" and meta["reconstruction_error"] == 0.0 and meta["rank"] == 24
    for source in ADAPTERS:
        assert store.get("trained_adapter", source).data_version in meta["sources"]
    rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:6]] for line in meta["retention"].splitlines()[2:]}
    merged_coder, own_coder, zero_coder, ret_coder = rows["coder"]
    merged_rev, own_rev, zero_rev, ret_rev = rows["reviewer"]
    # weights 0.7/0.3: each task keeps a large part of its own gain, the heavier one more
    assert own_coder < merged_coder < zero_coder and own_rev < merged_rev < zero_rev
    assert ret_coder > ret_rev > 0.3
    assert checks_passed(instance, record.run_id, "merged_adapter", "code_review")


def test_slots_serve_the_checked_versions(built):
    instance, _, store = built
    for name, source in (("coder", "trained_adapter"), ("reviewer", "trained_adapter"), ("code_review", "merged_adapter")):
        slot = Slot(slots_root(), name)
        state = slot.status()
        assert state.generation >= 1 and slot.verify().ok
        assert slot.manifest(state.active)["data_version"] == store.get(source, name).data_version
        _, served = latest(instance, "served_adapter", name)
        assert served["source_data_version"] == store.get(source, name).data_version
        generation, adapter = SlotReader(slot.path).current()
        assert generation == state.generation
        key = adapter.keys()[0]
        x = np.ones(adapter.spec.hidden_size, np.float32)
        expected = load_adapter(store.get(source, name).path).adapter.forward(key, x)
        np.testing.assert_allclose(adapter.forward(key, x), expected, rtol=1e-5)


def test_retraining_from_the_preset_reproduces_the_version(built):
    instance, _, store = built
    first = store.get("trained_adapter", "coder").data_version
    result = run_job(instance, "train_job", "coder", {"ops": {"trained_adapter": {"config": {"continue_from_last": False}}}})
    assert result.success
    _, meta = latest(instance, "trained_adapter", "coder")
    assert meta["path"].endswith(first), "same data, start and settings: same bytes, same data version"


def test_sensor_cursor_run_keys_failed_checks_and_promotion(built):
    instance, _, store = built
    # build_all already promoted everything: a fresh cursor (the daemon's first tick) asks for nothing
    first = promotion_sensor(build_sensor_context(instance=instance, definitions=defs))
    assert not first.run_requests, [r.partition_key for r in first.run_requests]
    cursor = first.cursor
    # nor does it undo a rollback made by hand
    slot = Slot(slots_root(), "coder")
    before = slot.manifest(slot.status().active)["data_version"]
    run_job(instance, "train_job", "coder", {"ops": {"trained_adapter": {"config": {"continue_from_last": True}}}})
    requested = promotion_sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    [request] = requested.run_requests
    assert request.partition_key == "coder" and request.run_key.startswith("promote-")
    assert defs.resolve_job_def("promote_job").execute_in_process(partition_key="coder", instance=instance, run_config=request.run_config).success
    assert slot.manifest(slot.status().active)["data_version"] != before
    slot.rollback()
    assert slot.manifest(slot.status().active)["data_version"] == before
    for fresh_cursor in (None, cursor):
        assert not promotion_sensor(build_sensor_context(instance=instance, cursor=fresh_cursor, definitions=defs)).run_requests
    assert slot.manifest(slot.status().active)["data_version"] == before, "the rollback stands"
    cursor = requested.cursor
    again = promotion_sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    assert not again.run_requests and again.cursor == cursor

    # one epoch ("quick") is far from the noise floor: the blocking check fails, the sensor skips it
    failed = run_job(instance, "train_job", "reviewer", {"ops": {"trained_adapter": {"config": {"preset": "quick", "continue_from_last": False}}}})
    assert not failed.success
    record, meta = latest(instance, "trained_adapter", "reviewer")
    assert record.run_id == failed.run_id and meta["val_over_floor"] > 1.25
    assert not checks_passed(instance, failed.run_id, "trained_adapter", "reviewer")
    skipped = promotion_sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    assert not skipped.run_requests and "skipped 1 with failed checks" in skipped.skip_reason.skip_message
    generation_before = Slot(slots_root(), "reviewer").generation

    # a good retrain resumes from the last version with EWC++, and the sensor promotes it
    good = run_job(instance, "train_job", "reviewer")
    assert good.success
    _, meta = latest(instance, "trained_adapter", "reviewer")
    assert meta["ewc"] is True and meta["resumed_from"] != "preset"
    evaluation = promotion_sensor(build_sensor_context(instance=instance, cursor=skipped.cursor, definitions=defs))
    [request] = evaluation.run_requests
    assert request.partition_key == "reviewer"
    promoted = defs.resolve_job_def("promote_job").execute_in_process(partition_key="reviewer", instance=instance, run_config=request.run_config, tags=request.tags)
    assert promoted.success
    slot = Slot(slots_root(), "reviewer")
    assert slot.generation == generation_before + 1
    assert slot.manifest(slot.status().active)["data_version"] == store.get("trained_adapter", "reviewer").data_version


@pytest.mark.parametrize(
    "config,message",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": -1}, "patience"),
        ({"schedule": "bogus"}, "bogus"),
    ],
)
def test_bad_training_config_fails_before_writing(built, config, message):
    instance, _, store = built
    before = store.versions("trained_adapter", "coder")
    result = run_job(instance, "train_job", "coder", {"ops": {"trained_adapter": {"config": config}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert message in str(failure.event_specific_data.error)
    assert store.versions("trained_adapter", "coder") == before


@pytest.mark.parametrize(
    "x_width,nan,message",
    [(768, True, "layers.0.q_proj: R has a non-finite value"), (700, False, "layers.0.q_proj: X has shape [20, 700], expected [20, 768]")],
)
def test_bad_user_data_is_refused(built, tmp_path, x_width, nan, message):
    instance, _, store = built
    folder = tmp_path / "user"
    folder.mkdir()
    X = np.random.default_rng(0).standard_normal((20, x_width)).astype(np.float32)
    R = np.zeros((20, 768), np.float32)
    if nan:
        R[3, 5] = np.nan
    save_file({"X": X, "R": R}, str(folder / "layers.0.q_proj.safetensors"))
    before = store.versions("synthetic_dataset", "reviewer")
    result = defs.resolve_job_def("train_job").execute_in_process(
        partition_key="reviewer", instance=instance, raise_on_error=False, asset_selection=[AssetKey("synthetic_dataset")],
        run_config={"ops": {"synthetic_dataset": {"config": {"user_folder": str(folder)}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert message in str(failure.event_specific_data.error)
    assert store.versions("synthetic_dataset", "reviewer") == before


def test_changing_one_rank_marks_only_that_chain_stale(built):
    instance, _, _ = built
    graph = defs.resolve_asset_graph()

    def status(asset, partition):
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        return resolver.get_status(AssetKey(asset), partition).value

    chain = [("preset_adapter", "coder"), ("synthetic_dataset", "coder"), ("trained_adapter", "coder"),
             ("merged_adapter", "code_review"), ("served_adapter", "coder"), ("served_adapter", "code_review")]
    others = [(a, "reviewer") for a in ("preset_adapter", "synthetic_dataset", "trained_adapter", "served_adapter")]
    # bring the composite and the slots up to date (merged before the promotions recorded them)
    assert not build_all(instance, adapters=[], composites=COMPOSITES, log=lambda _: None).failed
    for asset, part in chain + others:
        causes = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance)).get_stale_causes(AssetKey(asset), part)
        assert status(asset, part) == "FRESH", (asset, part, [(c.reason, c.dependency) for c in causes])

    current = catalogue_module.current_catalogue()
    coder = current.adapter("coder").model_copy(update={"rank": 8})
    changed = catalogue_module.Catalogue([coder if a.name == "coder" else a for a in current.adapters()], current.composites(), current.geometry, current.source)
    with catalogue_module.using_catalogue(changed):  # handed in to every asset that reads it
        observe_catalogue(instance)
        assert status("preset_adapter", "coder") == "STALE" and status("synthetic_dataset", "coder") == "STALE"
        assert all(status(a, p) == "FRESH" for a, p in others)
        # Dagster marks one hop at a time: re-materialising a stale asset marks its dependants
        assert run_job(instance, "train_job", "coder", {"ops": {"trained_adapter": {"config": {"continue_from_last": False}}}}).success
    assert status("trained_adapter", "coder") == "FRESH"
    assert status("merged_adapter", "code_review") == "STALE" and status("served_adapter", "coder") == "STALE"
    assert all(status(a, p) == "FRESH" for a, p in others)


def test_retrain_schedule_requests_every_adapter():
    assert retrain_schedule.default_status.value == "STOPPED" and retrain_schedule.cron_schedule == "0 2 * * *"
    with instance_for_test() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=datetime.datetime(2026, 11, 27, 2))
        requests = list(retrain_schedule(context))
    assert [r.partition_key for r in requests] == catalogue_module.current_catalogue().adapter_names
    assert requests[0].run_key == "retrain-2026-11-27-coder"
