"""Cold-start cost of `make run`: Numba compile time per kernel, on an empty Numba cache.

Runs what `ruv run-all` runs (`build_all`: the warm start, then train every adapter, merge every
composite, promote) in this process on a fresh DAGSTER_HOME, RUV_HOME and NUMBA_CACHE_DIR
(temporary directories), and records every Numba compilation in this process (Numba's
`numba:compile` event, fired on a cache miss only). Prints the warm start's wall time and the
build's, then what the build itself still compiled (0 when the warm start covered it). With
`--serial` there is no warm start: every kernel compiles in the build, one after the other, and
the table says, per kernel, signatures compiled, inclusive seconds (with the kernels it compiled on
the way) and exclusive seconds (its own). (A warm `make run` is a new process loading the cache:
time it with `make run`.)

Usage: python bench/bench_compile.py [--serial] [--top 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--serial", action="store_true", help="no warm start: compile everything in the build, in order")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ruv-compile-")
    for var, sub in (("NUMBA_CACHE_DIR", "numba"), ("DAGSTER_HOME", "dagster"), ("RUV_HOME", "ruv")):
        os.environ[var] = os.path.join(root, sub)
        os.makedirs(os.environ[var], exist_ok=True)

    from numba.core import event

    inclusive: dict[str, float] = defaultdict(float)
    exclusive: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    stack: list[list] = []

    class Timer(event.Listener):
        def on_start(self, ev):
            d = ev.data["dispatcher"]
            stack.append([f"{d.py_func.__module__}.{d.py_func.__qualname__}", time.perf_counter(), 0.0])

        def on_end(self, ev):
            name, t0, child = stack.pop()
            took = time.perf_counter() - t0
            inclusive[name] += took
            exclusive[name] += took - child
            count[name] += 1
            if stack:
                stack[-1][2] += took

    def build() -> float:
        from dagster import DagsterInstance

        from ruv_assets.orchestration.build_all import build_all

        started = time.perf_counter()
        with DagsterInstance.get() as instance:
            report = build_all(instance, log=lambda _msg: None, warm=False)
        if report.failed:
            raise SystemExit(f"build failed: {report.failed}")
        return time.perf_counter() - started

    started = time.perf_counter()
    import ruv_assets.definitions  # noqa: F401  (imports counted apart from the build)
    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
    from ruv_assets.orchestration.warm_start import warm_start

    t_import = time.perf_counter() - started
    warm = 0.0
    if not args.serial:
        started = time.perf_counter()
        warm_start(current_catalogue(), current_geometry())
        warm = time.perf_counter() - started
    with event.install_listener("numba:compile", Timer()):
        wall = build()
    top_level = sum(exclusive.values())
    print(f"imports {t_import:.1f} s; warm start {warm:.1f} s; build {wall:.1f} s; cold total {t_import + warm + wall:.1f} s; "
          f"the build compiled {len(count)} kernels ({sum(count.values())} signatures) in {top_level:.1f} s")
    print(f"{'kernel':70s} {'sigs':>4s} {'excl s':>7s} {'incl s':>7s}")
    for name in sorted(exclusive, key=lambda k: -exclusive[k])[: args.top]:
        print(f"{name:70s} {count[name]:4d} {exclusive[name]:7.2f} {inclusive[name]:7.2f}")


if __name__ == "__main__":
    main()
