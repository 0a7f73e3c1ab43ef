"""`ruv slot status|history|rollback|swap|verify|gc SLOT_DIR` and `ruv slot promote SLOT_DIR ADAPTER_DIR`.

SLOT_DIR is `<slots_root>/<name>` (by default `$RUV_HOME/slots/<name>`); the first promote creates
it. Refusals print one line on stderr and exit 2 with the slot unchanged; `verify` exits 1 when a
version or link is broken.
"""

from __future__ import annotations

import json
import sys

from ruv_resources.slot import Slot, SlotState
from ruv_assets.cli import UserError
from ruv_assets.serving import servers


def register(subparsers) -> None:
    parser = subparsers.add_parser("slot", help="inspect, promote into and roll back a hot-swap slot")
    actions = parser.add_subparsers(dest="slot_command", required=True, metavar="ACTION")

    def add(name: str, help: str, handler, *, json_option: bool = False):
        sub = actions.add_parser(name, help=help, description=help)
        sub.add_argument("slot_dir", metavar="SLOT_DIR", help="the slot directory, <slots_root>/<name>")
        if json_option:
            sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        sub.set_defaults(handler=handler)
        return sub

    add("status", "the active and standby versions and their generation", run_status, json_option=True)
    history = add("history", "every swap: generation, version, action, time, provenance", run_history, json_option=True)
    history.add_argument("--limit", type=_positive, help="only the newest N entries")
    rollback = add("rollback", "make the previously active version active again (as a new generation)", run_rollback, json_option=True)
    rollback.add_argument("--expected-generation", type=_non_negative, help="fail unless the slot is at this generation")
    rollback.add_argument("--to", metavar="VERSION", help="roll back to this version instead of the previous one")
    swap = add("swap", "make standby active and active standby (after promote --prepare-only)", run_swap, json_option=True)
    swap.add_argument("--expected-generation", type=_non_negative, help="fail unless the slot is at this generation")
    add("verify", "check every version's checksums and that it loads; exit 1 if any is broken", run_verify, json_option=True)
    gc = add("gc", "remove old versions, keeping active, standby and the newest N", run_gc, json_option=True)
    gc.add_argument("--keep", type=_positive, default=3, help="newest versions to keep besides active/standby (default 3)")
    promote = add("promote", "copy an adapter directory (PEFT layout) into the slot and make it active", run_promote, json_option=True)
    promote.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="adapter_model.safetensors + adapter_config.json")
    promote.add_argument("--expected-generation", type=_non_negative, help="fail unless the slot is at this generation")
    promote.add_argument("--prepare-only", action="store_true", help="write it as standby; do not make it active")
    promote.add_argument("--hidden-size", type=_positive, help="refuse an adapter of another hidden size")
    promote.add_argument("--intermediate-size", type=_positive, help="refuse an adapter of another intermediate size")
    promote.add_argument("--num-layers", type=_positive, help="refuse an adapter with another number of layers")
    promote.add_argument("--q-size", type=_positive, help="refuse an adapter whose q_proj output (heads * head_dim) differs")
    promote.add_argument("--kv-size", type=_positive, help="refuse an adapter whose k/v_proj output (kv_heads * head_dim) differs")
    promote.add_argument("--provenance", action="append", default=[], metavar="KEY=VALUE",
                         help="recorded in the manifest and history (asset_key, partition, data_version, run_id, ...)")


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _integer(text: str, least: int) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
    return value


def _print_state(state: SlotState, as_json: bool, verb: str | None = None) -> None:
    if as_json:
        print(json.dumps(state.to_dict(), indent=2))
        return
    if verb:
        print(f"{verb} {state.name}: generation {state.generation}, active {state.active}")
        return
    print(f"slot        {state.name}  ({state.path})")
    print(f"generation  {state.generation}")
    print(f"active      {state.active or '-'}")
    print(f"standby     {state.standby or '-'}")
    print(f"versions    {len(state.versions)}")
    for name in reversed(state.versions):
        roles = [r for r, v in (("active", state.active), ("standby", state.standby)) if v == name]
        print(f"  {name}" + (f"  ({', '.join(roles)})" if roles else ""))


def run_status(args) -> int:
    _print_state(Slot.from_dir(args.slot_dir).status(), args.json)
    return 0


def run_history(args) -> int:
    entries = Slot.from_dir(args.slot_dir).history(limit=args.limit)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no swaps yet")
    for e in entries:
        source = f" of {e['source_version']}" if e.get("source_version") else ""
        provenance = e.get("provenance") or {}
        origin = " ".join(f"{k}={provenance[k]}" for k in ("asset_key", "partition", "data_version", "run_id") if provenance.get(k))
        print(f"{e['generation']:>6}  {e.get('time', '?')}  {e.get('action', '?'):<8}  {e['version']}{source}"
              + (f"  {origin}" if origin else "") + ("  (recovered)" if e.get("recovered") else ""))
    return 0


def run_rollback(args) -> int:
    slot = Slot.from_dir(args.slot_dir)
    state = slot.rollback(args.expected_generation, to=args.to)
    _print_state(state, args.json, verb="rolled back")
    _report_servers(slot, state, None, args.json)
    return 0


def run_swap(args) -> int:
    slot = Slot.from_dir(args.slot_dir)
    state = slot.swap(args.expected_generation)
    _print_state(state, args.json, verb="swapped")
    _report_servers(slot, state, None, args.json)
    return 0


def run_verify(args) -> int:
    report = Slot.from_dir(args.slot_dir).verify()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for v in report.versions:
            roles = f" ({', '.join(v.roles)})" if v.roles else ""
            print(f"{'ok ' if v.ok else 'BAD'}  {v.version}{roles}")
            for problem in v.problems:
                print(f"       {problem}")
        for problem in report.problems:
            print(f"BAD  {problem}")
        for note in report.notes:
            print(f"note {note}")
        print(f"{report.slot}: {len(report.versions)} version(s), " + ("all ok" if report.ok else f"broken: {', '.join(report.bad) or 'links'}"))
    if not report.ok:
        print(f"ruv slot: verify: {report.slot} has broken version(s): {', '.join(report.bad) or 'see links above'}", file=sys.stderr)
        return 1
    return 0


def run_gc(args) -> int:
    removed = Slot.from_dir(args.slot_dir).gc(keep=args.keep)
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0


def run_promote(args) -> int:
    provenance = {}
    for item in args.provenance:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--provenance expects KEY=VALUE, got {item!r}")
        provenance[key] = value
    geometry = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size, "num_layers": args.num_layers,
                "q_size": args.q_size, "kv_size": args.kv_size}
    geometry = {k: v for k, v in geometry.items() if v is not None} or None
    slot = Slot.from_dir(args.slot_dir)
    if args.prepare_only:
        if args.expected_generation is not None:
            raise ValueError("--expected-generation applies to the swap; it cannot be used with --prepare-only")
        name = slot.prepare(args.adapter_dir, provenance=provenance, geometry=geometry)
        if args.json:
            print(json.dumps({"prepared": name, **slot.status().to_dict()}, indent=2))
        else:
            print(f"prepared {slot.name}: standby {name} (active unchanged)")
        return 0
    answers = servers.precheck(slot.name, args.adapter_dir, slot.path.parent.parent)
    refused = servers.refusal(answers, slot.name)
    if refused:
        raise UserError(refused)
    state = slot.promote(args.adapter_dir, provenance=provenance, expected_generation=args.expected_generation, geometry=geometry)
    _print_state(state, args.json, verb="promoted")
    _report_servers(slot, state, answers, args.json)
    return 0


def _report_servers(slot: Slot, state: SlotState, answers: dict | None, as_json: bool) -> None:
    """Wait (bounded) for the servers that follow this RUV_HOME to serve the new generation."""
    home = slot.path.parent.parent
    if answers is None:
        answers = servers.following(home)
    if not answers:
        return
    result = servers.wait_live(slot.name, state.generation, answers)
    if as_json:
        print(json.dumps({"servers": result}), file=sys.stderr)  # stdout stays one JSON document
    else:
        print(f"servers: {servers.summary(result)}")
