"""`promotion_sensor`: decides what to promote; the promote_job run does the file work.

It reads materialisations of `trained_adapter`, `merged_adapter` and `adapted_adapter` (a role
updated on its traffic) newer than its cursor (the
last event storage id seen), drops those whose blocking checks did not all pass in their run,
and requests one promotion run for the newest remaining materialisation of each partition
(run key = that materialisation's storage id, so a re-evaluation never promotes twice).

Two guards keep it right without trusting the cursor alone:
- a materialisation whose run has not finished yet (its check results may still be coming) stops
  the scan there, and the cursor stays just before it, so the next tick looks again;
- a materialisation at or below the source storage id the partition's last `served_adapter`
  recorded was already promoted (or superseded), and one with the data version already served is
  the same bytes: neither is requested, so a fresh cursor (e.g. the daemon's first tick after
  `make run`) does not undo a promotion or a user's rollback.
"""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ruv_assets.assets.adapted import CHECKS as ADAPTED_CHECKS
from ruv_assets.assets.merged import CHECKS as MERGED_CHECKS
from ruv_assets.assets.trained import CHECKS as TRAINED_CHECKS
from ruv_assets.orchestration.jobs import promote_job

WATCHED = ("trained_adapter", "merged_adapter", "adapted_adapter")
REQUIRED_CHECKS = {
    "trained_adapter": {c.name for c in TRAINED_CHECKS if c.blocking},
    "merged_adapter": {c.name for c in MERGED_CHECKS if c.blocking},
    "adapted_adapter": {c.name for c in ADAPTED_CHECKS},  # the guard's checks too, though they do not block the run
}
BATCH = 1000
SLOT_TAG = "ruv/slot"


def last_promoted(instance, partition: str) -> tuple[int, str]:
    """(source storage id, source data version) recorded by the partition's newest `served_adapter`."""
    result = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("served_adapter"), asset_partitions=[partition]), limit=1)
    if not result.records:
        return 0, ""
    metadata = result.records[0].asset_materialization.metadata
    storage_id, version = metadata.get("source_storage_id"), metadata.get("source_data_version")
    return (int(storage_id.value) if storage_id is not None and storage_id.value else 0,
            str(version.value) if version is not None else "")


def checks_passed(instance, run_id: str, asset: str, partition: str | None) -> bool:
    """True when every blocking check of `asset` was evaluated in `run_id` and passed."""
    passed: dict[str, bool] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        if evaluation.asset_key != AssetKey(asset):
            continue
        if partition is not None and getattr(evaluation, "partition", None) not in (None, partition):
            continue
        passed[evaluation.check_name] = passed.get(evaluation.check_name, True) and bool(evaluation.passed)
    required = REQUIRED_CHECKS[asset]
    return required <= passed.keys() and all(passed[name] for name in required)


@sensor(
    job=promote_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Promotes the newest trained/merged adapter whose blocking checks passed into its hot-swap slot.",
)
def promotion_sensor(context: SensorEvaluationContext):
    cursor = int(context.cursor or 0)
    newest: dict[str, tuple[int, str, str]] = {}  # partition -> (storage id, asset, data version)
    skipped: list[str] = []
    last_seen = cursor
    stop_at: int | None = None  # storage id of the first record whose run is still going
    for asset in WATCHED:
        after = cursor
        while True:
            result = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), after_storage_id=after), limit=BATCH, ascending=True
            )
            for record in result.records:
                if stop_at is not None and record.storage_id >= stop_at:
                    break
                after = record.storage_id
                materialization = record.asset_materialization
                partition = materialization.partition
                if partition is not None and not checks_passed(context.instance, record.run_id, asset, partition):
                    run = context.instance.get_run_by_id(record.run_id)
                    if run is not None and not run.is_finished:
                        stop_at = record.storage_id  # checks may still be on their way: look again next tick
                        break
                    skipped.append(f"{asset}[{partition}]@{record.storage_id}")
                    last_seen = max(last_seen, record.storage_id)
                    continue
                last_seen = max(last_seen, record.storage_id)
                if partition is None:
                    continue
                version = materialization.tags.get("dagster/data_version", "") if materialization.tags else ""
                if partition not in newest or record.storage_id > newest[partition][0]:
                    newest[partition] = (record.storage_id, asset, version)
            else:
                if len(result.records) == BATCH:
                    continue
            break
    if stop_at is not None:
        last_seen = min(last_seen, stop_at - 1)
        newest = {p: v for p, v in newest.items() if v[0] < stop_at}
    served = {p: last_promoted(context.instance, p) for p in newest}
    newest = {p: v for p, v in newest.items() if v[0] > served[p][0] and v[2] != served[p][1]}
    requests = [
        RunRequest(
            run_key=f"promote-{storage_id}",
            partition_key=partition,
            run_config={"ops": {"served_adapter": {"config": {"data_version": version, "source_storage_id": storage_id,
                                                              "source_asset": asset}}}},
            # ruv/slot: the run queue admits one promotion per slot at a time (deploy/dagster.yaml)
            # dagster/priority: promotions pass queued trainings, so a slot fills as soon as its source passes
            tags={"ruv/source_asset": asset, "ruv/source_storage_id": str(storage_id), SLOT_TAG: partition, "dagster/priority": "1"},
        )
        for partition, (storage_id, asset, version) in sorted(newest.items())
    ]
    if skipped:
        context.log.info(f"not promoted (blocking checks failed or missing): {', '.join(skipped)}")
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"nothing new to promote after storage id {cursor}"
                                                   + (f"; skipped {len(skipped)} with failed checks" if skipped else "")),
                            cursor=str(last_seen))
    return SensorResult(run_requests=requests, cursor=str(last_seen))
