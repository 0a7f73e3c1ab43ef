"""`adaptation_sensor`: turns new traffic into an update of the role's live adapter.

For every captured role with `adapt` on, it counts the training requests (not held out) that
arrived in the role's traffic log after the byte the last `adapted_adapter` read up to; at
`adapt.min_requests` or more it requests one `adapt_job` run, keyed by the log's data version, so
the same traffic is never requested twice. It waits while the role is training or adapting, and
while the role has nothing live to adapt (no slot and no trained version that passed). A traffic
log it cannot read is reported in the skip reason, never raised. `ruv adapt` evaluates the same
function with no daemon.
"""

from __future__ import annotations

from dagster import AssetObservation, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ruv_resources import traffic_log
from ruv_resources.errors import StoreError
from ruv_resources.store import ArtifactStore, default_root
from ruv_assets.catalogue.catalogue import current_catalogue
from ruv_assets.orchestration.build_sensors import DATA_VERSION_TAG, INTERVAL_SECONDS, changed_since, has_run, in_flight
from ruv_assets.orchestration.jobs import adapt_job

TRAFFIC_TAG = "ruv/traffic"


def traffic_observations(catalogue=None) -> dict[str, AssetObservation]:
    """One observation of `traffic` per role with a log, at the log's version (as observing the
    source asset reports it), so lineage shows which traffic an update read."""
    catalogue = catalogue or current_catalogue()
    home = default_root()
    events = {}
    for name in catalogue.adapter_names:
        path = traffic_log.log_path(home, name)
        if path.exists():
            events[name] = AssetObservation(asset_key="traffic", partition=name,
                                            tags={DATA_VERSION_TAG: traffic_log.version(path)})
    return events


def adaptation_requests(instance, catalogue=None) -> tuple[list[RunRequest], list[str]]:
    """`(run requests, one line per role not requested and why)`."""
    from ruv_assets.assets.adapted import traffic_start
    from ruv_assets.realmodel.adaptation import count_new

    catalogue = catalogue or current_catalogue()
    busy = in_flight(instance, "train_job") | in_flight(instance, "adapt_job")
    home = default_root()
    requests, notes = [], []
    for entry in catalogue.adapters():
        name = entry.name
        if entry.capture is None or not entry.capture.adapt.enabled:
            continue
        path = traffic_log.log_path(home, name)
        if not path.exists():
            continue
        try:
            version = traffic_log.version(path)
            new = count_new(path, traffic_start(instance, name))
        except (OSError, ValueError) as exc:
            notes.append(f"{name}: traffic log unreadable ({exc})")
            continue
        wanted = entry.capture.adapt.min_requests
        if new < wanted:
            notes.append(f"{name}: {new}/{wanted} new requests")
            continue
        if name in busy:
            notes.append(f"{name}: waiting (training or adapting)")
            continue
        try:
            ArtifactStore(home).get("trained_adapter", name, verify=False)
        except StoreError:
            notes.append(f"{name}: nothing live to adapt yet (no trained version passed its checks)")
            continue
        if has_run(instance, "adapt_job", name, TRAFFIC_TAG, version):
            continue
        requests.append(RunRequest(run_key=f"adapt-{name}-{version[:16]}", partition_key=name, job_name="adapt_job",
                                   tags={TRAFFIC_TAG: version}))
    return requests, notes


@sensor(
    jobs=[adapt_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_SECONDS,
    description="Updates a captured role's live adapter once enough new requests reached its traffic log (ruv feedback, the server).",
)
def adaptation_sensor(context: SensorEvaluationContext):
    changed, cursor = changed_since(context.cursor, traffic_observations())
    requests, notes = adaptation_requests(context.instance)
    for note in notes:
        context.log.info(note)
    if not requests and not changed:
        return SensorResult(skip_reason=SkipReason("no role has enough new traffic" + (f": {'; '.join(notes)}" if notes else "")),
                            cursor=cursor)
    return SensorResult(run_requests=requests, asset_events=changed, cursor=cursor)
