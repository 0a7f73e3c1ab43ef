"""Between adapters and the merge kernels: what the `merged_adapter` asset and `ruv merge` share."""

import numpy as np

from kernels.adapter import AdapterSpec, LoraAdapter, split_key
from kernels.modules import ALL_MODULES


def merge_sources(sources: list[LoraAdapter]) -> list[dict]:
    """Adapters as the merge kernels take them: {key: (A, B, scale)} in float32."""
    return [{k: (s.A[k].astype(np.float32), s.B[k].astype(np.float32), s.scale) for k in s.keys()} for s in sources]


def merged_adapter_from(result, sources: list[LoraAdapter], intermediate_size: int | None = None) -> LoraAdapter:
    """A PEFT adapter holding a merge result: rank R, alpha R (scale 1), targets the union."""
    first = sources[0].spec
    present = {split_key(k)[1] for k in result.modules}
    spec = AdapterSpec(
        rank=result.rank,
        alpha=float(result.rank),
        targets=tuple(m for m in ALL_MODULES if m in present),
        hidden_size=first.hidden_size,
        intermediate_size=intermediate_size or first.intermediate_size,
        num_layers=first.num_layers,
        dropout=max(s.spec.dropout for s in sources),
    )
    A = {k: np.ascontiguousarray(a, np.float32) for k, (a, _) in result.modules.items()}
    B = {k: np.ascontiguousarray(b, np.float32) for k, (_, b) in result.modules.items()}
    return LoraAdapter(spec, A, B)
