"""`ruv presets [--json] [--tag TAG]`: the catalogue with sizes at the configured geometry."""

from __future__ import annotations

import json

from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry


def register(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list the adapter catalogue")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--tag", help="only adapters with this domain tag")
    parser.set_defaults(handler=run)


def rows(tag: str | None = None) -> list[dict]:
    catalogue = current_catalogue()
    geometry = current_geometry()
    adapters = catalogue.by_tag(tag) if tag else catalogue.adapters()
    return [
        {
            "name": a.name,
            "rank": a.rank,
            "alpha": a.alpha,
            "dropout": a.dropout,
            "targets": list(a.target_modules),
            "tags": list(a.tags),
            "use_rslora": a.use_rslora,
            "params": a.params(geometry),
            "memory_bytes": a.memory_bytes(geometry),
            "description": a.description,
        }
        for a in adapters
    ]


def run(args) -> int:
    data = rows(args.tag)
    geometry = current_geometry()
    if args.json:
        print(json.dumps({"geometry": geometry.model_dump(), "adapters": data}, indent=2))
        return 0
    header = ("name", "rank", "alpha", "dropout", "targets", "tags", "params", "memory")
    table = [header] + [
        (
            r["name"], str(r["rank"]), f"{r['alpha']:g}", f"{r['dropout']:g}",
            ",".join(t.removesuffix("_proj") for t in r["targets"]), ",".join(r["tags"]),
            f"{r['params']:,}", _human(r["memory_bytes"]),
        )
        for r in data
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    heads = ""
    if geometry.num_attention_heads:
        heads = (f", {geometry.num_attention_heads} heads / {geometry.num_key_value_heads or geometry.num_attention_heads} "
                 f"kv heads (q {geometry.q_size}, k/v {geometry.kv_size})")
    model = f"base model {current_catalogue().base_model}\n" if current_catalogue().base_model else ""
    print(f"\n{model}geometry: hidden {geometry.hidden_size}, intermediate {geometry.intermediate_size}, "
          f"{geometry.num_layers} layers{heads}; memory at float32")
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
