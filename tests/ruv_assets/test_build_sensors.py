"""The sensors that build the graph, evaluated in process on a real (temporary) instance: the
catalogue becomes dynamic partitions, each new or edited adapter is trained once, each composite is
merged once per set of inputs and only from versions that passed their checks, and an edited
catalogue file is picked up with no code reload."""

import warnings

import pytest
from dagster import AssetKey, build_sensor_context, instance_for_test

from ruv_resources.dagster_resources import StoreResource
from ruv_resources.store import ArtifactStore
from ruv_assets.orchestration.build_all import build_all, sync_catalogue
from ruv_assets.orchestration.build_sensors import ENTRY_TAG, catalogue_sensor, merge_sensor, train_key
from ruv_assets.definitions import defs
from ruv_assets.orchestration.promotion_sensor import SLOT_TAG, promotion_sensor

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
warnings.filterwarnings("ignore", category=Warning, module="dagster")
PRESETS = ["coder", "researcher", "security", "architect", "reviewer"]
SMALL = "geometry: {hidden_size: 64, intermediate_size: 96, num_layers: 1}\n"


def evaluate(sensor, instance, cursor=None):
    context = build_sensor_context(instance=instance, definitions=defs, cursor=cursor, sensor_name=sensor.name,
                                   resources={"store": StoreResource()})
    return sensor(context)


def requested(evaluation) -> list[str]:
    return sorted(r.partition_key for r in evaluation.run_requests or [])


@pytest.fixture
def home(tmp_path, monkeypatch):
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(SMALL + "composites:\n  - {name: pair, method: average, sources: [coder, reviewer]}\n")
    monkeypatch.setenv("RUV_CATALOGUE", str(catalogue))
    monkeypatch.setenv("RUV_HOME", str(tmp_path / "ruv"))
    monkeypatch.delenv("RUV_SLOTS", raising=False)
    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance, catalogue, ArtifactStore(tmp_path / "ruv")


def test_a_fresh_instance_gets_partitions_observations_and_one_train_per_adapter(home):
    instance, _, _ = home
    first = evaluate(catalogue_sensor, instance)
    adds = {r.partitions_def_name: list(r.partition_keys) for r in first.dynamic_partitions_requests}
    assert adds == {"adapters": PRESETS, "composites": ["pair"], "slots": PRESETS + ["pair"]}
    assert requested(first) == sorted(PRESETS)
    assert {r.run_key for r in first.run_requests} == {f"train-{n}-{train_key(n)}" for n in PRESETS}
    assert sorted(e.partition for e in first.asset_events) == sorted(PRESETS + ["pair"])
    sync_catalogue(instance)
    assert list(instance.get_dynamic_partitions("slots")) == PRESETS + ["pair"]
    again = evaluate(catalogue_sensor, instance, cursor=first.cursor)
    assert not again.dynamic_partitions_requests and not again.asset_events, "nothing changed: nothing observed again"
    assert requested(again) == sorted(PRESETS), "not built yet: still requested (the daemon dedupes by run key)"
    merged = evaluate(merge_sensor, instance)
    assert not merged.run_requests and "pair (a source has no version that passed its checks)" in merged.skip_reason.skip_message


def test_the_catalogue_grows_and_shrinks_without_a_reload(home):
    instance, catalogue, store = home
    report = build_all(instance, log=lambda _: None)
    assert not report.failed and len(report.runs) == 5 + 1 + 6
    # everything the embedded build did is tagged: the daemon's sensors would request nothing
    assert not evaluate(catalogue_sensor, instance).run_requests
    assert not evaluate(merge_sensor, instance).run_requests
    assert not evaluate(promotion_sensor, instance).run_requests

    catalogue.write_text(SMALL + "adapters:\n  - {name: extra, rank: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"
                         "composites:\n  - {name: pair, method: average, sources: [coder, reviewer]}\n"
                         "  - {name: trio, method: average, sources: [coder, reviewer, extra]}\n")
    grown = evaluate(catalogue_sensor, instance)
    assert [(type(r).__name__, r.partitions_def_name, list(r.partition_keys)) for r in grown.dynamic_partitions_requests] == [
        ("AddDynamicPartitionsRequest", "adapters", ["extra"]), ("AddDynamicPartitionsRequest", "composites", ["trio"]),
        ("AddDynamicPartitionsRequest", "slots", ["extra", "trio"])]
    assert requested(grown) == ["extra"], "only the new adapter is trained"
    sync_catalogue(instance)
    assert "trio (a source has no version that passed its checks)" in evaluate(merge_sensor, instance).skip_reason.skip_message
    [train] = grown.run_requests
    run = defs.resolve_job_def("train_job").execute_in_process(partition_key="extra", instance=instance, tags=train.tags)
    assert run.success and run.dagster_run.tags[ENTRY_TAG] == train.tags[ENTRY_TAG]
    assert not evaluate(catalogue_sensor, instance).run_requests
    [merge] = evaluate(merge_sensor, instance).run_requests
    assert merge.partition_key == "trio", "pair's inputs did not change"
    assert defs.resolve_job_def("merge_job").execute_in_process(partition_key="trio", instance=instance, tags=merge.tags).success
    assert not evaluate(merge_sensor, instance).run_requests
    promotions = evaluate(promotion_sensor, instance).run_requests
    assert sorted(r.partition_key for r in promotions) == ["extra", "trio"]
    assert all(r.tags[SLOT_TAG] == r.partition_key for r in promotions)

    # an edited entry is retrained once; a removed one leaves the partitions, its history stays
    catalogue.write_text(SMALL + "composites:\n  - {name: pair, method: average, sources: [coder, reviewer]}\n")
    shrunk = evaluate(catalogue_sensor, instance)
    removed = {r.partitions_def_name: list(r.partition_keys) for r in shrunk.dynamic_partitions_requests}
    assert removed == {"adapters": ["extra"], "composites": ["trio"], "slots": ["extra", "trio"]}
    assert all(type(r).__name__ == "DeleteDynamicPartitionsRequest" for r in shrunk.dynamic_partitions_requests)
    sync_catalogue(instance)
    assert "extra" not in instance.get_dynamic_partitions("adapters")
    records = instance.fetch_materializations(AssetKey("trained_adapter"), limit=100).records
    assert any(r.asset_materialization.partition == "extra" for r in records)
    assert store.get("trained_adapter", "extra").data_version


def test_every_materialisation_says_where_it_ran(home):
    instance, _, _ = home
    assert not build_all(instance, adapters=["reviewer"], composites=[], log=lambda _: None).failed
    for asset in ("preset_adapter", "synthetic_dataset", "trained_adapter", "served_adapter"):
        [record] = instance.fetch_materializations(AssetKey(asset), limit=1).records
        worker = record.asset_materialization.metadata["worker"].value
        assert "/" in worker and worker.split("/", 1)[1].startswith(("pid-", "worker")), worker
