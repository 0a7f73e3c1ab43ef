"""One real cluster for the cluster tests: PostgreSQL, Redis, the daemon, the webserver and two
Celery workers started by `scripts/cluster.sh` (what `make cluster` runs) on free loopback ports,
in a temporary directory, with a catalogue of 50 small adapters; stopped at the end."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the five presets (always in the catalogue) and 45 declared ones; fewer only to iterate on the tests
N_ADAPTERS = int(os.environ.get("RUV_CLUSTER_TEST_ADAPTERS", "50"))
PRESETS = ["coder", "researcher", "security", "architect", "reviewer"]
CUSTOM = [f"a{i:02d}" for i in range(N_ADAPTERS - len(PRESETS))]
GEOMETRY = "geometry: {hidden_size: 32, intermediate_size: 48, num_layers: 1}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catalogue_text(names: list[str], composite_sources: list[str]) -> str:
    adapters = "".join(f"  - {{name: {n}, rank: 2, alpha: 4, target_modules: [q_proj, v_proj], tags: [small]}}\n" for n in names)
    sources = ", ".join(composite_sources)
    return GEOMETRY + "adapters:\n" + adapters + f"composites:\n  - {{name: blend, method: average, sources: [{sources}]}}\n"


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    catalogue: Path
    web_port: int

    def script(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", str(REPO / "scripts" / "cluster.sh"), *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"cluster.sh {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def instance(self):
        from dagster import DagsterInstance

        return DagsterInstance.from_config(self.env["DAGSTER_HOME"])

    def graphql(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.web_port)

    def dagster(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).with_name("dagster")), *args, "-w", str(REPO / "workspace.yaml")],
                              env=self.env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")  # one cluster for the module's tests, stopped before other modules run
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    catalogue = root / "catalogue.yaml"
    catalogue.write_text(catalogue_text(CUSTOM, CUSTOM[:2]))
    web_port = free_port()
    # no RUV_CLUSTER_PG_DIR: pytest's temporary directory is private (0700), so the script has to
    # find a place the postgres user can reach by itself, as it does for a clone in a private home
    env = dict(os.environ, RUV_CLUSTER_DIR=str(root / "cluster"), RUV_HOME=str(root / "ruv"), RUV_CATALOGUE=str(catalogue),
               WORKERS="2", RUV_CLUSTER_PG_PORT=str(free_port()), RUV_CLUSTER_REDIS_PORT=str(free_port()),
               RUV_CLUSTER_WEB_PORT=str(web_port), VENV=str(Path(sys.executable).parents[1]),
               NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".numba_cache")))
    for key in ("RUV_CLUSTER_PG_DIR", "RUV_SLOTS", "RUV_HIDDEN_SIZE", "RUV_INTERMEDIATE_SIZE", "RUV_NUM_LAYERS", "DAGSTER_HOME"):
        env.pop(key, None)
    cluster = Cluster(root, env, catalogue, web_port)
    up = cluster.script("up", timeout=600, check=False)
    try:
        if up.returncode != 0:
            logs = "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted((root / "cluster" / "logs").glob("*.log")))
            pytest.fail(f"make cluster failed:\n{up.stdout}\n{up.stderr}\n{logs}")
        # what `make cluster-run` sources: the generated passwords and ports, the instance's home
        exported = subprocess.run(["bash", "-c", f"source {shlex.quote(str(root / 'cluster' / 'env'))} && env -0"],
                                  capture_output=True, check=True).stdout.decode().split("\0")
        cluster.env.update(dict(line.split("=", 1) for line in exported if line.startswith(("DAGSTER_", "RUV_CLUSTER_"))))
        cluster.env["DAGSTER_HOME"] = str(root / "cluster" / "home")
        cluster.env["DAGSTER_MAX_CONCURRENT_RUNS"] = cluster.env["WORKERS"]
        with pytest.MonkeyPatch.context() as mp:
            for key in (k for k in cluster.env if k.startswith("DAGSTER_")):  # what the instance's yaml reads
                mp.setenv(key, cluster.env[key])
            yield cluster
    finally:
        cluster.script("down", timeout=120, check=False)
        cluster.script("forget", timeout=60, check=False)  # what `make clean` does: the outside data directory goes
