"""`ruv merge METHOD DIR... -o OUT`: merge adapters in PEFT layout into a new PEFT adapter.

The output is written to a temporary directory beside OUT and renamed into place only when
complete, so a failed merge leaves no output directory; an existing OUT is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ruv_kernels.merge import METHODS, MergeError, merge
from ruv_resources.errors import AdapterFormatError
from ruv_resources.peft_format import load_adapter, save_adapter
from ruv_resources.store import fsync_dir, fsync_tree, publishable_mode
from ruv_assets.cli import UserError
from ruv_assets.judging.composite import merge_sources, merged_adapter_from


def register(subparsers) -> None:
    parser = subparsers.add_parser("merge", help="merge PEFT adapters on their deltas")
    parser.add_argument("method", choices=sorted(METHODS), help="merge method")
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR", help="adapter directories in PEFT layout")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="new directory for the merged adapter")
    parser.add_argument("--weights", type=_floats, help="comma-separated weights, one per adapter")
    parser.add_argument("--density", type=float, help="ties/dare/magnitude_prune/prune_merged: fraction kept, in (0, 1]")
    parser.add_argument("--lambda", dest="lam", type=float, default=1.0, help="scaling of the merged delta (default 1)")
    parser.add_argument("--t", type=float, help="slerp: interpolation in [0, 1]")
    parser.add_argument("--rank", type=int, help="compress the result to this rank (truncated SVD)")
    parser.add_argument("--seed", type=int, default=0, help="dare: seed of the keep mask")
    parser.add_argument("--dare-combine", choices=("linear", "ties"), default="linear", help="dare: how kept deltas combine")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", ",").split(",") if x)
    except ValueError:
        raise ValueError(f"--weights: {text!r} is not a comma-separated list of numbers") from None


def _check_shapes_agree(dirs: list[str], sources) -> None:
    """Sources that share a module must agree on its shape, and all on the number of layers."""
    layers = {s.spec.num_layers for s in sources}
    if len(layers) > 1:
        raise UserError(f"adapters are for different model geometries: {sorted(layers)} layers")
    seen: dict[str, tuple[str, tuple[int, int]]] = {}
    for where, source in zip(dirs, sources):
        for module, shape in source.spec.module_shapes().items():
            if module in seen and seen[module][1] != shape:
                other, theirs = seen[module]
                raise UserError(f"adapters are for different model geometries: {module} is [{theirs[0]} -> {theirs[1]}] "
                                f"in {other} but [{shape[0]} -> {shape[1]}] in {where}")
            seen.setdefault(module, (where, shape))


def run(args) -> int:
    out = Path(args.output)
    if out.exists():
        raise UserError(f"{out} already exists; give a new directory")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} is not a directory")
    try:
        sources = [load_adapter(d).adapter.astype("float32") for d in args.adapters]
    except AdapterFormatError as exc:
        raise UserError(str(exc)) from None
    _check_shapes_agree(args.adapters, sources)

    try:
        result = merge(args.method, merge_sources(sources), weights=args.weights, density=args.density, lam=args.lam,
                       t=args.t, rank=args.rank, seed=args.seed, dare_combine=args.dare_combine)
    except MergeError as exc:
        raise UserError(str(exc)) from None
    merged = merged_adapter_from(result, sources)
    metadata = {"name": out.name, "method": args.method, "sources": [str(Path(d).resolve()) for d in args.adapters],
                "reconstruction_error": result.reconstruction_error}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_adapter(merged, tmp, metadata=metadata, dtype=args.dtype)
        publishable_mode(tmp)
        fsync_tree(tmp)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = {"output": str(out), "method": args.method, "rank": result.rank, "targets": list(merged.spec.targets),
              "reconstruction_error": result.reconstruction_error, "params": merged.spec.param_count()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"merged {len(sources)} adapters by {args.method} into {out}: rank {result.rank}, "
              f"targets {','.join(merged.spec.targets)}, relative reconstruction error {result.reconstruction_error:.3g}")
    return 0
