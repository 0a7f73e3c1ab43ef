"""Between adapters and the merge kernels: what the `merged_adapter` asset and `ruv merge` share."""

import numpy as np

from ruv_kernels.adapter import AdapterSpec, LoraAdapter, split_key
from ruv_kernels.modules import ALL_MODULES


def merge_sources(sources: list[LoraAdapter]) -> list[dict]:
    """Adapters as the merge kernels take them: {key: (A, B, scale)} in float32."""
    return [{k: (s.A[k].astype(np.float32), s.B[k].astype(np.float32), s.scale) for k in s.keys()} for s in sources]


def merged_adapter_from(result, sources: list[LoraAdapter]) -> LoraAdapter:
    """A PEFT adapter holding a merge result: rank R, alpha R (scale 1), targets the union.

    Each model dimension comes from a source whose modules show it (an attention-only adapter
    does not know the intermediate size; one with MLP modules does); callers check that the
    sources agree on every module they share.
    """
    present = {split_key(k)[1] for k in result.modules}
    dims: dict[str, int] = {}
    for source in sources:
        for field, value in source.spec.geometry().items():
            dims.setdefault(field, value)
    spec = AdapterSpec(
        rank=result.rank,
        alpha=float(result.rank),
        targets=tuple(m for m in ALL_MODULES if m in present),
        hidden_size=dims["hidden_size"],
        intermediate_size=dims.get("intermediate_size"),
        num_layers=dims["num_layers"],
        dropout=max(s.spec.dropout for s in sources),
        q_size=dims.get("q_size"),
        kv_size=dims.get("kv_size"),
    )
    A = {k: np.ascontiguousarray(a, np.float32) for k, (a, _) in result.modules.items()}
    B = {k: np.ascontiguousarray(b, np.float32) for k, (_, b) in result.modules.items()}
    return LoraAdapter(spec, A, B)
