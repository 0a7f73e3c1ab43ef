"""Build everything on an instance with no daemon (`make run`, `ruv run-all`): evaluate the
sensors the daemon would evaluate, do what they ask, and run the requested runs in this process.

1. `catalogue_sensor`: its dynamic-partition requests and entry observations are applied to the
   instance, as the daemon applies them.
2. One `train_job` run per selected adapter (every adapter by default, like "Materialize all"),
   tagged with the entry version it builds, so the daemon's `catalogue_sensor` does not repeat it.
3. One `merge_job` run per selected composite, tagged with its inputs as `merge_sensor` computes
   them, so the daemon's `merge_sensor` does not repeat it.
4. `promotion_sensor`: the promotions it requests, run here.
5. `adaptation_sensor`: an update per role with enough new traffic, then `promotion_sensor` again
   for those that passed their guard (`adapt`, also what `ruv adapt` runs alone).

Runs execute in this process, one after the other, so Numba's kernels load once. On an empty
Numba cache, `warm_start` first compiles them on two processes (see there). On a deployment
with a daemon (`deploy/`, `make cluster`) the same sensors request the same runs and the run queue
hands them to workers; nothing here is needed there.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import DagsterInstance, build_sensor_context

from ruv_resources.store import ArtifactStore


@dataclass
class BuildReport:
    runs: list[tuple[str, str, bool, float]] = field(default_factory=list)  # job, partition, success, seconds

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(job, part) for job, part, ok, _ in self.runs if not ok]


def sync_catalogue(instance: DagsterInstance):
    """Evaluate `catalogue_sensor` and apply its partition requests and observations; returns the
    evaluation (its run requests are left to the caller)."""
    from ruv_assets.orchestration.build_sensors import apply_partition_requests, catalogue_sensor
    from ruv_assets.definitions import defs

    evaluation = catalogue_sensor(build_sensor_context(instance=instance, definitions=defs, sensor_name="catalogue_sensor"))
    apply_partition_requests(instance, evaluation.dynamic_partitions_requests or [])
    for event in evaluation.asset_events or []:
        instance.report_runless_asset_event(event)
    return evaluation


def observe_catalogue(instance: DagsterInstance) -> None:
    """Record every catalogue entry's current version (an observation per partition)."""
    from ruv_assets.orchestration.build_sensors import entry_observations

    for event in entry_observations().values():
        instance.report_runless_asset_event(event)


def runner(instance: DagsterInstance, report: BuildReport, log: Callable[[str], None]):
    """`run(job_name, partition, **kwargs) -> success`: one run in this process, recorded in `report`."""
    from ruv_assets.definitions import defs

    def run(job_name: str, partition: str, **kwargs) -> bool:
        started = time.perf_counter()
        result = defs.resolve_job_def(job_name).execute_in_process(
            partition_key=partition, instance=instance, raise_on_error=False, **kwargs
        )
        seconds = time.perf_counter() - started
        report.runs.append((job_name, partition, result.success, seconds))
        log(f"{job_name}[{partition}]: {'ok' if result.success else 'FAILED'} in {seconds:.1f}s (run {result.run_id[:8]})")
        return result.success

    return run


def build_all(instance: DagsterInstance, *, adapters: list[str] | None = None, composites: list[str] | None = None,
              log: Callable[[str], None] = print, warm: bool = True) -> BuildReport:
    from ruv_assets.orchestration.build_sensors import ENTRY_TAG, INPUTS_TAG, describe, merge_key, train_key
    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
    from ruv_assets.definitions import defs
    from ruv_assets.orchestration.warm_start import warm_start

    catalogue = current_catalogue()
    store = ArtifactStore(defs.resources["store"].root or None)
    report = BuildReport()
    started = time.perf_counter()
    if warm and warm_start(catalogue, current_geometry(), log=log):
        log(f"warm start: kernels compiled on two processes in {time.perf_counter() - started:.1f}s")

    run = runner(instance, report, log)
    evaluation = sync_catalogue(instance)
    changes = describe(evaluation.dynamic_partitions_requests or [])
    log(f"catalogue_sensor: {' '.join(changes) if changes else 'partitions match the catalogue'}; entries observed")
    for name in adapters if adapters is not None else catalogue.adapter_names:
        run("train_job", name, tags={ENTRY_TAG: train_key(name, catalogue)})
    for name in composites if composites is not None else catalogue.composite_names:
        key = merge_key(name, store, catalogue)
        run("merge_job", name, tags={INPUTS_TAG: key} if key else {})

    promote(instance, run, log)
    adapt(instance, run, log)
    return report


def promote(instance: DagsterInstance, run, log) -> None:
    """Evaluate `promotion_sensor` and run the promotions it requests."""
    from ruv_assets.definitions import defs
    from ruv_assets.orchestration.promotion_sensor import promotion_sensor

    context = build_sensor_context(instance=instance, definitions=defs, sensor_name="promotion_sensor")
    evaluation = promotion_sensor(context)
    for request in evaluation.run_requests or []:
        run("promote_job", request.partition_key, run_config=request.run_config, tags=request.tags)
    if not evaluation.run_requests:
        log(f"promotion_sensor: {evaluation.skip_reason.skip_message if evaluation.skip_reason else 'nothing to promote'}")


def adapt(instance: DagsterInstance, run, log, roles: list[str] | None = None) -> int:
    """Evaluate `adaptation_sensor`, run the updates it requests (of `roles`, if given), then
    promote what passed; returns how many updates ran."""
    from ruv_assets.orchestration.adaptation_sensor import adaptation_requests, traffic_observations

    for event in traffic_observations().values():
        instance.report_runless_asset_event(event)
    requests, notes = adaptation_requests(instance)
    requests = [r for r in requests if roles is None or r.partition_key in roles]
    for note in notes:
        log(f"adaptation_sensor: {note}")
    for request in requests:
        run("adapt_job", request.partition_key, tags=request.tags)
    if requests:
        promote(instance, run, log)
    return len(requests)
