"""`ruv run-all`: materialise the whole graph on the project's Dagster instance and fill the slots."""

from __future__ import annotations

import time

from ruv_assets.cli import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("run-all", help="materialise every asset and partition, then promote into the slots")
    parser.add_argument("--adapter", action="append", help="only these adapters (repeatable)")
    parser.add_argument("--composite", action="append", help="only these composites (repeatable)")
    parser.add_argument("--sync-only", action="store_true",
                        help="only bring the partitions and entry observations in step with the catalogue (what catalogue_sensor does)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import os

    from dagster import DagsterInstance

    from ruv_assets.orchestration.build_all import build_all, sync_catalogue
    from ruv_assets.orchestration.build_sensors import describe
    from ruv_assets.catalogue.catalogue import current_catalogue

    catalogue = current_catalogue()
    for kind, names, known in (("adapter", args.adapter, catalogue.adapter_names), ("composite", args.composite, catalogue.composite_names)):
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise UserError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known) or 'none'}")
    started = time.perf_counter()
    if not os.environ.get("DAGSTER_HOME"):
        raise UserError("DAGSTER_HOME is not set: run 'make run', or export DAGSTER_HOME=$PWD/dagster_home")
    instance = DagsterInstance.get()
    with instance:
        if args.sync_only:
            evaluation = sync_catalogue(instance)
            for change in describe(evaluation.dynamic_partitions_requests or []):
                print(change)
            print(f"partitions match {catalogue.source}")
            return 0
        report = build_all(instance, adapters=args.adapter, composites=args.composite)
    print(f"built {len(report.runs)} runs in {time.perf_counter() - started:.1f}s")
    if report.failed:
        raise UserError("failed: " + ", ".join(f"{job}[{part}]" for job, part in report.failed))
    return 0
