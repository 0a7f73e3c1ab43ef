"""`ruv materialize ARGS...`: `dagster asset materialize -m ruv_assets.definitions ARGS...` on an
instance whose partitions match the catalogue.

The adapters, composites and slots are dynamic partitions: on a fresh instance they exist only
once `catalogue_sensor` has ticked, so Dagster's own command refuses `--partition coder` with a
traceback. This syncs them first (what `ruv run-all --sync-only` does), checks the partition is
one the catalogue declares, then hands over to Dagster with the arguments unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ruv_assets.cli import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "materialize", help="sync the partitions with the catalogue, then `dagster asset materialize -m ruv_assets.definitions ...`",
        description="Every argument goes to `dagster asset materialize` (e.g. --select trained_adapter --partition coder).")
    parser.set_defaults(handler=run, forwards_arguments=True)  # every other argument goes to Dagster


def run(args) -> int:
    from dagster import DagsterInstance

    from ruv_assets.catalogue.catalogue import current_catalogue
    from ruv_assets.orchestration.build_all import sync_catalogue
    from ruv_assets.orchestration.unsynced import partition_argument

    forwarded = list(args.forwarded)
    if not os.environ.get("DAGSTER_HOME"):
        raise UserError("DAGSTER_HOME is not set: export DAGSTER_HOME=$PWD/dagster_home (the project's instance)")
    catalogue = current_catalogue()
    partition = partition_argument(forwarded)
    known = list(catalogue.adapter_names) + list(catalogue.composite_names)
    if partition is not None and partition not in known:
        raise UserError(f"partition {partition!r} is not in {catalogue.source}; it declares {', '.join(known)}")
    with DagsterInstance.get() as instance:
        sync_catalogue(instance)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "ruv_assets.definitions", *forwarded]
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached
