"""`ruv feedback ROLE FILE.jsonl`: append requests (and what was thought of their answers) to a
role's traffic log, `$RUV_HOME/traffic/<role>.jsonl`, which the adaptation of that role learns from.

One JSON object a line: `prompt` (required), optional `answer`, `quality` in [0, 1] and
`correction` (the answer it should have given). `-` reads standard input. A bad line (not UTF-8,
not an object, an empty prompt, a quality outside [0, 1], too large, a duplicate of a line before
it in the file) is counted and skipped, one line per kind of problem; the good ones are appended as
one batch, acknowledged only once on disk.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from ruv_assets.cli import UserError
from ruv_resources import traffic_log
from ruv_resources.store import default_root


def register(subparsers) -> None:
    parser = subparsers.add_parser("feedback", help="append requests, answers, quality and corrections to a role's traffic log")
    parser.add_argument("role", help="an adapter of the catalogue (its slot's name)")
    parser.add_argument("file", help="JSONL file of {prompt, answer?, quality?, correction?}; - for standard input")
    parser.set_defaults(handler=run)


def parse_lines(lines) -> tuple[list, dict[str, list[int]]]:
    """`(records, {reason: [line numbers]})` of an iterable of raw byte lines."""
    records, skipped, seen = [], defaultdict(list), set()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped["not UTF-8"].append(number)
            continue
        except ValueError:
            skipped["not JSON"].append(number)
            continue
        record, reason = traffic_log.validate(obj)
        if record is None:
            skipped[reason].append(number)
        elif record.key in seen:
            skipped["a duplicate of an earlier line"].append(number)
        else:
            seen.add(record.key)
            records.append(record)
    return records, dict(skipped)


def _numbers(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:5]))
    return shown + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")


def run(args) -> int:
    from ruv_assets.catalogue.catalogue import current_catalogue

    catalogue = current_catalogue()
    if args.role not in catalogue.adapter_names:
        raise UserError(f"unknown role {args.role!r}; the catalogue's adapters: {', '.join(catalogue.adapter_names)}")
    path = traffic_log.log_path(default_root(), args.role)
    if args.file == "-":
        records, skipped = parse_lines(sys.stdin.buffer)
    else:
        try:
            with open(args.file, "rb") as f:
                records, skipped = parse_lines(f)
        except FileNotFoundError:
            raise UserError(f"no such file: {args.file}") from None
    for reason, lines in sorted(skipped.items()):
        print(f"skipped {len(lines)}: {reason} (line {_numbers(lines)})")
    if not records:
        raise UserError(f"nothing to append from {args.file} ({sum(map(len, skipped.values()))} lines skipped)")
    traffic_log.append(path, records)
    print(f"appended {len(records)} requests to {path}")
    return 0
