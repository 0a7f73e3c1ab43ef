"""Build everything, in order, on a Dagster instance: train every adapter, merge every composite,
then evaluate `promotion_sensor` and run the promotions it requests — the same decision the daemon
makes, so `make run` (which has no daemon) ends with every slot filled.

Each stage is a run of its own job (`train_job`, `merge_job`, `promote_job`) executed in this
process, so Numba's kernels are loaded once rather than in every step subprocess.
"""


import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import DagsterInstance, Failure, OpExecutionContext, build_sensor_context, job, op


def observe_catalogue(instance: DagsterInstance) -> None:
    """Record the catalogue's current entries, so staleness after an edit is visible."""
    from dagster._core.definitions.observe import observe

    from ruv_assets.assets.entries import adapter_entry, composite_entry

    for source in (adapter_entry, composite_entry):  # one job each: different partitions
        observe([source], instance=instance)


@dataclass
class BuildReport:
    runs: list[tuple[str, str, bool, float]] = field(default_factory=list)  # job, partition, success, seconds

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(job, part) for job, part, ok, _ in self.runs if not ok]


def build_all(instance: DagsterInstance, *, adapters: list[str] | None = None, composites: list[str] | None = None,
              log: Callable[[str], None] = print) -> BuildReport:
    from ruv_assets.definitions import defs
    from ruv_assets.catalogue import current_catalogue
    from ruv_assets.sensors import promotion_sensor

    catalogue = current_catalogue()
    report = BuildReport()

    def run(job_name: str, partition: str, **kwargs) -> bool:
        started = time.perf_counter()
        result = defs.resolve_job_def(job_name).execute_in_process(
            partition_key=partition, instance=instance, raise_on_error=False, **kwargs
        )
        seconds = time.perf_counter() - started
        report.runs.append((job_name, partition, result.success, seconds))
        log(f"{job_name}[{partition}]: {'ok' if result.success else 'FAILED'} in {seconds:.1f}s (run {result.run_id[:8]})")
        return result.success

    observe_catalogue(instance)
    log("observed adapter_entry and composite_entry (catalogue entries)")
    for name in adapters if adapters is not None else catalogue.adapter_names:
        run("train_job", name)
    for name in composites if composites is not None else catalogue.composite_names:
        run("merge_job", name)

    context = build_sensor_context(instance=instance, definitions=defs, sensor_name="promotion_sensor")
    evaluation = promotion_sensor(context)
    for request in evaluation.run_requests or []:
        run("promote_job", request.partition_key, run_config=request.run_config, tags=request.tags)
    if not evaluation.run_requests:
        log(f"promotion_sensor: {evaluation.skip_reason.skip_message if evaluation.skip_reason else 'nothing to promote'}")
    return report


@op(description="Run train_job for every adapter, merge_job for every composite, then the promotions the sensor requests.")
def build_everything(context: OpExecutionContext) -> None:
    report = build_all(context.instance, log=context.log.info)
    if report.failed:
        raise Failure(f"{len(report.failed)} stage runs failed: " + ", ".join(f"{job}[{part}]" for job, part in report.failed))


@job(description="Everything, in order: every adapter trained, every composite merged, every slot filled (one run per stage and partition).")
def build_all_job():
    build_everything()
