"""Build throughput of a 50-adapter catalogue (small geometry) on the embedded default (`ruv
run-all`: SQLite, runs one after another in one process) and on the cluster (`make cluster` +
`make cluster-run`: Postgres, Redis, the daemon's sensors and queue, Celery workers) with 1 and 2
workers, and where each run's time goes: queued (created -> launched), launch -> first step,
steps, and the whole run.

    .venv/bin/python bench/bench_cluster.py [--adapters 50] [--workers 1,2]

Writes bench/out/cluster.json and prints the table BENCHMARKS.md records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the machine code `make run` compiled, shared by this process and every worker (set before numba loads)
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
GEOMETRY = "geometry: {hidden_size: 32, intermediate_size: 48, num_layers: 1}\n"


def catalogue(path: Path, n: int) -> Path:
    """n adapters: the five presets (always declared) and n - 5 small ones, and one composite."""
    names = [f"a{i:02d}" for i in range(n - 5)]
    path.write_text(GEOMETRY + "adapters:\n" + "".join(
        f"  - {{name: {a}, rank: 2, alpha: 4, target_modules: [q_proj, v_proj]}}\n" for a in names)
        + f"composites:\n  - {{name: blend, method: average, sources: [{names[0]}, {names[1]}]}}\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_phases(instance) -> dict:
    """Per job: median seconds queued, launch -> first step, steps, whole run; and the wall time
    from the first run created to the last one finished."""
    from dagster import DagsterEventType

    records = instance.get_run_records()
    phases: dict[str, dict[str, list[float]]] = {}
    first, last = min(r.create_timestamp.timestamp() for r in records), max(r.end_time for r in records if r.end_time)
    for record in records:
        run = record.dagster_run
        events = {}
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else None
            if kind in (DagsterEventType.RUN_STARTING.value, DagsterEventType.RUN_START.value, DagsterEventType.STEP_START.value):
                events.setdefault(kind, entry.timestamp)
        launched = events.get(DagsterEventType.RUN_STARTING.value, events.get(DagsterEventType.RUN_START.value))
        step = events.get(DagsterEventType.STEP_START.value)
        job = phases.setdefault(run.job_name, {"queued": [], "launch_to_first_step": [], "first_step_to_end": [], "run": []})
        job["queued"].append(launched - record.create_timestamp.timestamp())
        job["launch_to_first_step"].append(step - launched)
        job["first_step_to_end"].append(record.end_time - step)
        job["run"].append(record.end_time - launched)
    summary = {job: {k: round(statistics.median(v), 3) for k, v in values.items()} | {"runs": len(values["run"])}
               for job, values in phases.items()}
    return {"wall_seconds": round(last - first, 1), "runs": len(records), "jobs": summary}


def embedded(root: Path, catalogue_path: Path) -> dict:
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    os.environ.update(DAGSTER_HOME=str(home), RUV_HOME=str(root / "ruv"), RUV_CATALOGUE=str(catalogue_path))
    from dagster import DagsterInstance

    from ruv_assets.orchestration.build_all import build_all

    started = time.perf_counter()
    with DagsterInstance.get() as instance:
        report = build_all(instance, log=lambda _: None)
        result = run_phases(instance)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["failed"] = len(report.failed)
    return result


def cluster(root: Path, catalogue_path: Path, workers: int, *, cold_cache: bool = False) -> dict:
    """With `cold_cache`, a fresh NUMBA_CACHE_DIR with Numba's cache debugging on: the result says
    how many kernels each worker compiled and saved, against how many it loaded."""
    extra = {"NUMBA_CACHE_DIR": str(root / "numba_cache"), "NUMBA_DEBUG_CACHE": "1"} if cold_cache else {}
    pg_parent = Path(tempfile.mkdtemp(prefix="ruv-cluster-pg-"))  # reachable by the postgres user
    env = dict(os.environ, RUV_CLUSTER_DIR=str(root / "cluster"), RUV_CLUSTER_PG_DIR=str(pg_parent / "pg"),
               RUV_HOME=str(root / "ruv"), RUV_CATALOGUE=str(catalogue_path),
               WORKERS=str(workers), RUV_CLUSTER_PG_PORT=str(free_port()), RUV_CLUSTER_REDIS_PORT=str(free_port()),
               RUV_CLUSTER_WEB_PORT=str(free_port()), VENV=str(Path(sys.executable).parents[1]), **extra)
    env.pop("DAGSTER_HOME", None)
    script = ["bash", str(REPO / "scripts" / "cluster.sh")]
    try:
        subprocess.run(script + ["up"], env=env, check=True, capture_output=True, timeout=600)
        done = subprocess.run(script + ["run", "--timeout", "1800"], env=env, capture_output=True, text=True, timeout=1900)
        exported = subprocess.run(["bash", "-c", f"source {shlex.quote(str(root / 'cluster' / 'env'))} && env -0"],
                                  capture_output=True, check=True).stdout.decode().split("\0")
        os.environ.update(dict(line.split("=", 1) for line in exported if line.startswith("DAGSTER_")))
        os.environ.update(DAGSTER_HOME=str(root / "cluster" / "home"), DAGSTER_MAX_CONCURRENT_RUNS=str(workers))
        from dagster import DagsterInstance

        with DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
            result = run_phases(instance)
        result["cluster_run"] = done.stdout.strip().splitlines()[:12]
        result["ok"] = done.returncode == 0
        if cold_cache:
            result["numba_cache"] = {
                log.stem: {"saved": text.count("[cache] data saved to"), "loaded": text.count("[cache] data loaded from")}
                for log in sorted((root / "cluster" / "logs").glob("worker-*.log")) for text in [log.read_text()]}
        return result
    finally:
        subprocess.run(script + ["down"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(pg_parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded reference")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        path = catalogue(root / "catalogue.yaml", args.adapters)
        if not args.no_embedded:
            results["embedded"] = embedded(root / "embedded", path)
        for workers in [int(w) for w in args.workers.split(",")]:
            results[f"cluster_{workers}_workers"] = cluster(root / f"cluster{workers}", path, workers)
        cold = cluster(root / "cold", catalogue(root / "small.yaml", 7), 2, cold_cache=True)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=1) + "\n")
    n = args.adapters
    print(f"{n} adapters + 1 composite, {n + 1} slots; median seconds per run (train_job / promote_job)")
    print(f"{'setup':<20} {'wall s':>7} {'adapters/min':>12} {'queued':>13} {'launch->step':>13} {'steps':>13} {'run':>13}")
    for name, r in [(k, v) for k, v in results.items() if k != "cold_cache_2_workers"]:
        t, p = r["jobs"]["train_job"], r["jobs"]["promote_job"]
        cell = lambda k: f"{t[k]:>6.2f}/{p[k]:<6.2f}"  # noqa: E731
        print(f"{name:<20} {r['wall_seconds']:>7.1f} {60 * n / r['wall_seconds']:>12.1f} {cell('queued'):>13} "
              f"{cell('launch_to_first_step'):>13} {cell('first_step_to_end'):>13} {cell('run'):>13}")
    print(f"cold Numba cache, 7 adapters on 2 workers: kernels saved/loaded per worker: {cold['numba_cache']}")
    results["cold_cache_2_workers"] = cold
    (out / "cluster.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
