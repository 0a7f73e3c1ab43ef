"""The `ruv` command: the things a user does outside Dagster.

Each sub-command lives in its own module exposing `register(subparsers)`. Errors a user can cause
print one line on stderr and exit non-zero; nothing already stored is changed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("presets", "merge", "slot", "store", "run_all", "materialize", "cluster_run", "demo", "serve", "feedback", "adapt")  # module names; run_all registers `run-all`


class UserError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ruv", description="Task-specific LoRA adapters: presets, merges, hot-swap slots.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"ruv_assets.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "forwards_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.forwarded = extra
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        return 0
    except (UserError, ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"ruv {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
