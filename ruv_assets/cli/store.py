"""`ruv store verify [--root DIR]`: re-hash every object in the artefact store (as `ruv slot verify`
does for a slot); exit 1 and one line per corrupt object or dangling `LATEST`."""

from __future__ import annotations

import sys

from ruv_resources.store import ArtifactStore, default_root


def register(subparsers) -> None:
    parser = subparsers.add_parser("store", help="check the artefact store")
    actions = parser.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="re-hash every stored object; exit 1 if any no longer matches its version")
    verify.add_argument("--root", help="store root (default $RUV_HOME, else .ruv)")
    verify.set_defaults(handler=run_verify)


def run_verify(args) -> int:
    store = ArtifactStore(args.root or default_root())
    if not store.root.is_dir():
        print(f"ruv store verify: error: no store at {store.root}", file=sys.stderr)
        return 2
    count = sum(1 for _ in store.objects())
    problems = store.verify()
    for problem in problems:
        print(problem)
    print(f"{store.root}: {count} objects, {len(problems)} problems")
    return 1 if problems else 0
