"""Statistics of many modules as flat named arrays (for one safetensors file) and back.

A Gram shared by several modules (a layer's q/k/v/gate/up) is stored once, under
`<gram key>.G` (the LayerStats name, e.g. `layers.0.hidden`); each module stores
`<key>.C`, `<key>.rr`, `<key>.q_sum`, `<key>.n`. `metadata` ({module key: gram key}, strings:
what safetensors keeps beside the tensors) says which Gram each module reads. Unpacking shares
one Gram array between the modules that name it again.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.stats import ModuleStats

_FIELDS = ("C", "rr", "q_sum", "n")


def pack_stats(stats: dict[str, ModuleStats]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays, metadata) for `stats`; modules sharing one Gram array must share its gram key."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {}
    owner: dict[str, int] = {}
    for key, st in stats.items():
        gk = getattr(st, "gram_key", key) or key
        if gk in owner and owner[gk] != id(st.G):
            raise ExactSolveError(key, f"Gram key {gk!r} names two different Gram arrays")
        if gk in stats and gk != key:
            raise ExactSolveError(key, f"Gram key {gk!r} is also a module key")
        if gk not in owner:
            owner[gk] = id(st.G)
            arrays[f"{gk}.G"] = st.G
        meta[key] = gk
        a = st.to_arrays()
        for f in _FIELDS:
            arrays[f"{key}.{f}"] = a[f]
    return arrays, meta


def unpack_stats(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> dict[str, ModuleStats]:
    """Inverse of `pack_stats` (copies each stored Gram once; modules naming it share the copy)."""
    grams: dict[str, np.ndarray] = {}
    out: dict[str, ModuleStats] = {}
    readers = {gk: list(metadata.values()).count(gk) for gk in set(metadata.values())}
    for key, gk in metadata.items():
        try:
            if gk not in grams:
                grams[gk] = np.array(arrays[f"{gk}.G"], np.float64, order="C")
            fields = {f: arrays[f"{key}.{f}"] for f in _FIELDS}
        except KeyError as exc:
            raise ExactSolveError(key, f"stored statistics lack {exc.args[0]}") from None
        G = grams[gk]
        C = np.array(fields["C"], np.float64, order="C")
        if G.ndim != 2 or C.ndim != 2 or G.shape != (C.shape[0], C.shape[0]):
            raise ExactSolveError(key, f"stored shapes do not fit: G {G.shape}, C {C.shape}")
        st = ModuleStats(G.shape[0], C.shape[1], G=G, name=key)
        st.C = C
        st.rr, st.q_sum, st.n = float(fields["rr"][0]), float(fields["q_sum"][0]), int(fields["n"][0])
        st.gram_key = gk
        st.shared_gram = readers[gk] > 1  # a Gram of its own may keep accumulating
        out[key] = st
    return out
