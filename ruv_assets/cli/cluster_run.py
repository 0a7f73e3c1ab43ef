"""`ruv cluster-run`: build the whole graph on a deployment with a daemon and workers, and wait.

The daemon's sensors request the runs (`catalogue_sensor` trains, `merge_sensor` merges,
`promotion_sensor` promotes); the queued run coordinator hands them to the Celery workers. This
command watches the instance until nothing is queued or running and every slot serves its
source's newest good version, resubmits once, through the webserver, any run that failed before
(so a second invocation completes what a lost worker left, without redoing what succeeded), and
prints a summary: runs per job and status, where they ran, how long it took.
"""

from __future__ import annotations

import time
from collections import Counter

from ruv_assets.cli import UserError

JOBS = ("train_job", "merge_job", "promote_job")
LOST = ("FAILURE", "CANCELED")  # run statuses that need a resubmission


def register(subparsers) -> None:
    parser = subparsers.add_parser("cluster-run", help="build everything on the cluster (daemon + workers) and wait for it")
    parser.add_argument("--webserver", default="127.0.0.1:53000", help="host:port of the Dagster webserver (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default %(default)s)")
    parser.add_argument("--no-retry", action="store_true", help="do not resubmit runs that failed")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from dagster import DagsterInstance

    host, _, port = args.webserver.rpartition(":")
    with DagsterInstance.get() as instance:
        started = build_started(instance)
        outcome = wait_for_build(instance, webserver=(host or "127.0.0.1", int(port)), timeout=args.timeout,
                                 retry=not args.no_retry, since=started)
    print(outcome.summary())
    if outcome.problems:
        raise UserError("; ".join(outcome.problems))
    return 0


class Outcome:
    def __init__(self, instance, since: float, seconds: float, problems: list[str], resubmitted: list[str]):
        from dagster import RunsFilter

        self.seconds, self.problems, self.resubmitted = seconds, problems, resubmitted
        records = instance.get_run_records(filters=RunsFilter(created_after=_utc(since)))
        self.runs = Counter((r.dagster_run.job_name, r.dagster_run.status.value) for r in records if r.dagster_run.job_name in JOBS)
        self.workers = workers_since(instance, since)

    def summary(self) -> str:
        lines = [f"cluster-run: {self.seconds:.1f}s"]
        for (job, status), count in sorted(self.runs.items()):
            lines.append(f"  {job:<12} {status:<8} {count}")
        for asset, by_worker in sorted(self.workers.items()):
            lines.append(f"  {asset} materialised by: " + ", ".join(f"{w} ({n})" for w, n in sorted(by_worker.items())))
        if self.resubmitted:
            lines.append("  resubmitted: " + ", ".join(self.resubmitted))
        lines.extend(f"  PROBLEM: {p}" for p in self.problems)
        return "\n".join(lines)


def build_started(instance) -> float:
    """Now, or earlier if the sensors already started runs that are still queued or going: the
    summary then counts the whole build, not only what follows this command."""
    from dagster import RunsFilter

    from ruv_assets.orchestration.build_sensors import IN_FLIGHT

    going = instance.get_run_records(filters=RunsFilter(statuses=IN_FLIGHT))
    return min([time.time()] + [r.create_timestamp.timestamp() - 1 for r in going])


def _utc(timestamp: float):
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)


def workers_since(instance, since: float) -> dict[str, Counter]:
    """Per asset, how many materialisations each worker made since `since`."""
    from dagster import AssetKey, AssetRecordsFilter

    out: dict[str, Counter] = {}
    for asset in ("trained_adapter", "merged_adapter", "served_adapter"):
        counter: Counter = Counter()
        cursor = None
        while True:
            result = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset), after_timestamp=since),
                                                     limit=1000, cursor=cursor)
            for record in result.records:
                worker = record.asset_materialization.metadata.get("worker")
                counter[worker.value if worker is not None else "?"] += 1
            if not result.has_more:
                break
            cursor = result.cursor
        if counter:
            out[asset] = counter
    return out


def latest_runs(instance, job: str) -> dict[str, object]:
    """The newest run of `job` per partition."""
    from dagster import RunsFilter

    newest: dict[str, object] = {}
    for run in instance.get_runs(filters=RunsFilter(job_name=job)):  # newest first
        newest.setdefault(run.tags.get("dagster/partition"), run)
    return newest


def outstanding(instance, catalogue, store) -> tuple[list[str], list[object]]:
    """What is not built yet (one line each), and the runs whose failure left it so."""
    from ruv_assets.orchestration.build_sensors import ENTRY_TAG, INPUTS_TAG, merge_key, train_key
    from ruv_resources.errors import StoreError
    from ruv_resources.slot import Slot, slots_root

    pending, failed = [], []
    trains, merges, promotions = (latest_runs(instance, job) for job in JOBS)
    for name in catalogue.adapter_names:
        run = trains.get(name)  # the newest: a retrain from the UI or the schedule counts too
        if run is None or (run.status.value != "SUCCESS" and run.tags.get(ENTRY_TAG) != train_key(name, catalogue)):
            pending.append(f"train {name}: not requested yet")
        elif run.status.value != "SUCCESS":
            pending.append(f"train {name}: {run.status.value}")
            if run.status.value in LOST:
                failed.append(run)
    for name in catalogue.composite_names:
        key, run = merge_key(name, store, catalogue), merges.get(name)
        if key is None:
            lost = [s for s in catalogue.composite(name).sources if trains.get(s) is not None and trains[s].status.value in LOST]
            pending.append(f"merge {name}: " + (f"BLOCKED by failed source {', '.join(lost)}" if lost else "a source has no good version"))
        elif run is None or run.tags.get(INPUTS_TAG) != key:
            pending.append(f"merge {name}: not requested yet")
        elif run.status.value != "SUCCESS":
            pending.append(f"merge {name}: {run.status.value}")
            if run.status.value in LOST:
                failed.append(run)
    for name in catalogue.adapter_names + catalogue.composite_names:
        source = "trained_adapter" if name in catalogue.adapter_names else "merged_adapter"
        try:
            wanted = store.get(source, name, verify=False).data_version
        except StoreError:
            continue  # reported above
        slot = Slot(slots_root(), name)
        state = slot.status() if slot.exists() else None
        if state is not None and state.active and slot.manifest(state.active).get("data_version") == wanted:
            continue
        run = promotions.get(name)
        pending.append(f"promote {name}: {run.status.value if run is not None else 'not requested yet'}")
        if run is not None and run.status.value in LOST:
            failed.append(run)
    return pending, failed


def wait_for_build(instance, *, webserver: tuple[str, int], timeout: float, retry: bool, since: float, poll: float = 2.0) -> Outcome:
    from dagster import RunsFilter
    from dagster_graphql import DagsterGraphQLClient

    from ruv_assets.orchestration.build_sensors import IN_FLIGHT
    from ruv_assets.catalogue.catalogue import current_catalogue
    from ruv_resources.store import ArtifactStore

    client = DagsterGraphQLClient(webserver[0], port_number=webserver[1])
    store = ArtifactStore()
    resubmitted: list[str] = []
    retried: set[tuple[str, str]] = set()
    quiet_since = None
    while True:
        catalogue = current_catalogue()
        busy = instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT, job_name=None))
        pending, failed = outstanding(instance, catalogue, store)
        if retry:
            for run in failed:
                key = (run.job_name, run.tags.get("dagster/partition"))
                if key in retried:
                    continue
                retried.add(key)
                tags = {k: v for k, v in run.tags.items() if not k.startswith("dagster/") or k == "dagster/partition"}
                tags = {k: v for k, v in tags.items() if not k.startswith("dagster-celery/")}
                client.submit_job_execution(run.job_name, run_config=run.run_config, tags=tags)
                resubmitted.append(f"{key[0]}[{key[1]}] (was {run.status.value})")
                busy = [run]  # wait for it
        # done when nothing runs and all that is left waits on a failure (reported, resubmitted once)
        finished = not busy and all(p.endswith(LOST) or "BLOCKED" in p for p in pending)
        # the sensors tick every few seconds: quiet for two ticks means nothing more is coming
        quiet_since = (quiet_since or time.time()) if finished else None
        if quiet_since is not None and time.time() - quiet_since > 12:
            return Outcome(instance, since, time.time() - since, pending, resubmitted)
        if time.time() - since > timeout:
            return Outcome(instance, since, time.time() - since, [f"timed out after {timeout:.0f}s"] + pending, resubmitted)
        time.sleep(poll)
