"""The sensors that build the graph: the daemon evaluates them on any deployment, and `ruv run-all`
evaluates the same functions in process when there is no daemon.

- `catalogue_sensor` keeps the `adapters`, `composites` and `slots` dynamic partitions in step with
  the catalogue file (added entries appear, removed ones stop being built, their history stays) and
  requests one `train_job` run per adapter entry version it has not seen built: a new adapter, or
  an edited one (rank, targets, geometry), is trained with no code reload.
- `merge_sensor` requests one `merge_job` run per composite and set of inputs: the composite's entry
  and the version each source publishes as `LATEST`, which a trained adapter only becomes when all
  three of its blocking checks passed. It waits while a source is missing or still training.
- `promotion_sensor` (in `sensors`) then promotes what passed into the slots.

A run's inputs are recorded as tags (`ruv/entry`, `ruv/inputs`), so whichever process started a
run (the daemon, `make run`, `make cluster-run`, the UI), the sensors see it and never repeat it.
"""

from __future__ import annotations

import hashlib
import json

from dagster import (
    AddDynamicPartitionsRequest,
    AssetObservation,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ruv_resources.dagster_resources import StoreResource
from ruv_resources.errors import StoreError
from ruv_resources.store import ArtifactStore
from ruv_assets.assets.entries import entry_version
from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
from ruv_assets.orchestration.jobs import merge_job, train_job
from ruv_assets.catalogue.partitions import wanted_partitions

ENTRY_TAG, INPUTS_TAG, PARTITION_TAG = "ruv/entry", "ruv/inputs", "dagster/partition"
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
INTERVAL_SECONDS = 5
DATA_VERSION_TAG = "dagster/data_version"  # where Dagster reads an observation's data version


def changed_since(cursor: str | None, current: dict[str, AssetObservation]) -> tuple[list[AssetObservation], str]:
    """`(observations whose data version differs from the cursor's, the new cursor)`: a sensor
    reports an observable source only when it moved."""
    seen = json.loads(cursor) if cursor else {}
    changed = [event for key, event in current.items() if seen.get(key) != event.tags[DATA_VERSION_TAG]]
    return changed, json.dumps({key: event.tags[DATA_VERSION_TAG] for key, event in current.items()}, sort_keys=True)


def partition_requests(instance: DagsterInstance, catalogue=None) -> list:
    """Add and delete requests that make the instance's dynamic partitions match the catalogue."""
    requests = []
    for name, keys in wanted_partitions(catalogue).items():
        present = set(instance.get_dynamic_partitions(name))
        added = [k for k in keys if k not in present]
        removed = sorted(present - set(keys))
        if added:
            requests.append(AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=added))
        if removed:
            requests.append(DeleteDynamicPartitionsRequest(partitions_def_name=name, partition_keys=removed))
    return requests


def apply_partition_requests(instance: DagsterInstance, requests) -> None:
    """What the daemon does with a sensor's `dynamic_partitions_requests`, for in-process use."""
    for request in requests:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def describe(requests) -> list[str]:
    """`+adapters:a,b` / `-slots:c`: one word per partition request."""
    return [f"{'+' if isinstance(r, AddDynamicPartitionsRequest) else '-'}{r.partitions_def_name}:{','.join(r.partition_keys)}"
            for r in requests]


def train_key(name: str, catalogue=None) -> str:
    """The adapter's entry version (entry + geometry in force), short: what a train run builds."""
    return entry_version((catalogue or current_catalogue()).adapter(name), current_geometry())[:16]


def merge_key(name: str, store: ArtifactStore, catalogue=None) -> str | None:
    """Hash of the composite's entry and its sources' `LATEST` versions; None while one is missing."""
    catalogue = catalogue or current_catalogue()
    composite = catalogue.composite(name)
    digest = hashlib.sha256(entry_version(composite, current_geometry()).encode())
    for source in composite.sources:
        try:
            digest.update(store.get("trained_adapter", source, verify=False).data_version.encode())
        except StoreError:
            return None
    return digest.hexdigest()[:16]


def has_run(instance: DagsterInstance, job: str, partition: str, tag: str, value: str) -> bool:
    filters = RunsFilter(job_name=job, tags={PARTITION_TAG: partition, tag: value})
    return bool(instance.get_runs(filters=filters, limit=1))


def in_flight(instance: DagsterInstance, job: str) -> set[str]:
    """Partitions with a run of `job` queued or going."""
    runs = instance.get_runs(filters=RunsFilter(job_name=job, statuses=IN_FLIGHT))
    return {r.tags.get(PARTITION_TAG) for r in runs}


def train_requests(instance: DagsterInstance, catalogue=None) -> list[RunRequest]:
    catalogue = catalogue or current_catalogue()
    busy = in_flight(instance, "train_job")
    requests = []
    for name in catalogue.adapter_names:
        key = train_key(name, catalogue)
        if name in busy or has_run(instance, "train_job", name, ENTRY_TAG, key):
            continue
        requests.append(RunRequest(run_key=f"train-{name}-{key}", partition_key=name, job_name="train_job",
                                   tags={ENTRY_TAG: key}))
    return requests


def merge_requests(instance: DagsterInstance, store: ArtifactStore, catalogue=None) -> tuple[list[RunRequest], list[str]]:
    """Run requests, and the composites left waiting (a source missing or training)."""
    catalogue = catalogue or current_catalogue()
    training, merging = in_flight(instance, "train_job"), in_flight(instance, "merge_job")
    requests, waiting = [], []
    for composite in catalogue.composites():
        if training & set(composite.sources):
            waiting.append(f"{composite.name} (a source is training)")
            continue
        key = merge_key(composite.name, store, catalogue)
        if key is None:
            waiting.append(f"{composite.name} (a source has no version that passed its checks)")
            continue
        if composite.name in merging or has_run(instance, "merge_job", composite.name, INPUTS_TAG, key):
            continue
        requests.append(RunRequest(run_key=f"merge-{composite.name}-{key}", partition_key=composite.name,
                                   job_name="merge_job", tags={INPUTS_TAG: key}))
    return requests, waiting


@sensor(
    jobs=[train_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_SECONDS,
    description="Keeps the adapters/composites/slots partitions in step with the catalogue; trains each new or edited adapter once.",
)
def catalogue_sensor(context: SensorEvaluationContext):
    catalogue = current_catalogue()
    partitions = partition_requests(context.instance, catalogue)
    changed, cursor = changed_since(context.cursor, entry_observations(catalogue))
    runs = train_requests(context.instance, catalogue)
    if not partitions and not runs and not changed:
        return SensorResult(skip_reason=SkipReason(f"partitions match {catalogue.source}; every adapter entry has been trained"),
                            cursor=cursor)
    # Dagster adds the partitions before it records the observations and launches the runs
    return SensorResult(run_requests=runs, dynamic_partitions_requests=partitions, asset_events=changed, cursor=cursor)


def entry_observations(catalogue=None) -> dict[str, AssetObservation]:
    """One observation per catalogue entry, its data version the entry's hash (as `adapter_entry`
    and `composite_entry` report when observed), so an edit marks exactly its chain unsynced."""
    catalogue = catalogue or current_catalogue()
    geometry = current_geometry()
    events = {}
    for asset, entries in (("adapter_entry", catalogue.adapters()), ("composite_entry", catalogue.composites())):
        for entry in entries:
            events[f"{asset}/{entry.name}"] = AssetObservation(
                asset_key=asset, partition=entry.name, tags={DATA_VERSION_TAG: entry_version(entry, geometry)})
    return events


@sensor(
    jobs=[merge_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_SECONDS,
    description="Merges each composite once per set of inputs, when every source has a version that passed its blocking checks.",
)
def merge_sensor(context: SensorEvaluationContext, store: StoreResource):
    requests, waiting = merge_requests(context.instance, store.store())
    if not requests:
        return SensorResult(skip_reason=SkipReason("every composite is merged from its sources' current versions"
                                                   + (f"; waiting: {', '.join(waiting)}" if waiting else "")))
    return SensorResult(run_requests=requests)
