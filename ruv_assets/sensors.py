"""`promotion_sensor`: decides what to promote; the promote_job run does the file work.

It reads materialisations of `trained_adapter` and `merged_adapter` newer than its cursor (the
last event storage id seen), drops those whose blocking checks did not all pass in their run,
and requests one promotion run for the newest remaining materialisation of each partition
(run key = that materialisation's storage id, so a re-evaluation never promotes twice).
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

from ruv_assets.jobs import promote_job

WATCHED = ("trained_adapter", "merged_adapter")
REQUIRED_CHECKS = {
    "trained_adapter": {"weights_finite", "beats_zero_adapter", "near_noise_floor"},
    "merged_adapter": {"weights_finite", "beats_zero_adapter", "retention_within_bounds"},
}
BATCH = 1000


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
    minimum_interval_seconds=30,
    description="Promotes the newest trained/merged adapter whose blocking checks passed into its hot-swap slot.",
)
def promotion_sensor(context: SensorEvaluationContext):
    cursor = int(context.cursor or 0)
    newest: dict[str, tuple[int, str, str]] = {}  # partition -> (storage id, asset, data version)
    skipped: list[str] = []
    last_seen = cursor
    for asset in WATCHED:
        after = cursor
        while True:
            result = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), after_storage_id=after), limit=BATCH, ascending=True
            )
            for record in result.records:
                after = last_seen_id = record.storage_id
                last_seen = max(last_seen, last_seen_id)
                materialization = record.asset_materialization
                partition = materialization.partition
                if partition is None:
                    continue
                if not checks_passed(context.instance, record.run_id, asset, partition):
                    skipped.append(f"{asset}[{partition}]@{record.storage_id}")
                    continue
                version = materialization.tags.get("dagster/data_version", "") if materialization.tags else ""
                if partition not in newest or record.storage_id > newest[partition][0]:
                    newest[partition] = (record.storage_id, asset, version)
            if len(result.records) < BATCH:
                break
    requests = [
        RunRequest(
            run_key=f"promote-{storage_id}",
            partition_key=partition,
            run_config={"ops": {"served_adapter": {"config": {"data_version": version, "source_storage_id": storage_id}}}},
            tags={"ruv/source_asset": asset, "ruv/source_storage_id": str(storage_id)},
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
