"""One line instead of Dagster's traceback when a CLI run names a partition the instance lacks.

The adapters, composites and slots are dynamic partitions: they exist on an instance only once the
catalogue has been synced (`catalogue_sensor` ticked, `ruv run-all --sync-only`, `ruv materialize`).
Before that, `dagster asset materialize ... --partition coder` ends in `DagsterInvalidSubsetError`.
Loading the definitions from that command checks the instance first and, when the partition is
missing, exits with what to run instead. Any other process (webserver, daemon, workers, tests)
is left alone.
"""

from __future__ import annotations

import os
import sys

PARTITIONINGS = ("adapters", "composites", "slots")


def requested_partition(argv: list[str]) -> str | None:
    """The `--partition` of a `dagster asset materialize` command line, else None."""
    if not argv or os.path.basename(argv[0]) != "dagster" or argv[1:3] != ["asset", "materialize"]:
        return None
    return partition_argument(argv)


def partition_argument(args: list[str]) -> str | None:
    """The value of `--partition X` or `--partition=X` in args, else None."""
    for i, arg in enumerate(args):
        if arg == "--partition" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--partition="):
            return arg.split("=", 1)[1]
    return None


def selection_arguments(argv: list[str]) -> list[str]:
    """The arguments after `dagster asset materialize`, less the code location (`ruv materialize` names it)."""
    kept, skip = [], False
    for arg in argv[3:]:
        if skip:
            skip = False
        elif arg in ("-m", "--module-name", "-w", "--workspace", "-f", "--python-file"):
            skip = True
        else:
            kept.append(arg)
    return kept


def missing_partition_message(partition: str, argv: list[str]) -> str | None:
    """Why Dagster is about to refuse `partition` on the current instance, or None."""
    hint = f"run `ruv materialize {' '.join(selection_arguments(argv))}` (it syncs the catalogue first), or `ruv run-all --sync-only` once"
    if not os.environ.get("DAGSTER_HOME"):
        return f"DAGSTER_HOME is not set, so Dagster uses a throwaway instance without the catalogue's partitions: export DAGSTER_HOME=$PWD/dagster_home and {hint}"
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        known = {key for name in PARTITIONINGS for key in instance.get_dynamic_partitions(name)}
    if partition in known:
        return None
    return f"partition {partition!r} does not exist on the instance at {os.environ['DAGSTER_HOME']} yet (its catalogue was never synced): {hint}"


def exit_if_unsynced(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    partition = requested_partition(argv)
    if partition is None:
        return
    message = missing_partition_message(partition, argv)
    if message:
        raise SystemExit(f"ruv: {message}")
