"""`magnitude_prune`: the (weighted) sum of the deltas, keeping its top `density` fraction of
entries by magnitude, per module.

merged = prune(lam * sum_i w_i * delta_i, density), weights default 1. The sum is one GEMM of
the concatenated factors, the threshold is found by selection (as in TIES) and applied in
place. Note PEFT's `merge_utils.magnitude_prune` prunes each task before summing; here the
pruning acts on the merged delta, which keeps the largest entries of what is actually served.
"""

from __future__ import annotations

import numpy as np

from kernels.merge import dense
from kernels.merge.core import (
    MergeResult,
    check_density,
    check_lam,
    check_rank,
    check_weights,
    dense_merge,
    prepare,
)

NAME = "magnitude_prune"
PARAMS = ("density", "weights", "lam", "rank")
REQUIRED = ("density",)


def prune_inplace(x: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the top int(density * size) magnitudes of a contiguous float32 array."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous):
        raise TypeError("prune_inplace needs a C-contiguous float32 array (it works in place)")
    flat = x.reshape(-1)
    if density < 1.0:
        dense.trim_inplace(flat, dense.trim_threshold(flat, density))
    return x


def merge(sources, *, density, weights=None, lam=1.0, rank=None) -> MergeResult:
    """Magnitude-pruned weighted sum per module, truncated to `rank`."""
    prep = prepare(sources, method=NAME)
    density = check_density(density)
    lam = check_lam(lam)
    rank = check_rank(rank)
    w = check_weights(weights, len(prep.sources), default=1.0)

    def combine(key, idx, stack, out):
        out_f, in_f = prep.shapes[key]
        a_parts, b_parts = [], []
        for i in idx:
            a, b, s = prep.sources[i][key]
            a_parts.append(a)
            b_parts.append(b * np.float32(lam * w[i] * s))
        np.matmul(np.hstack(b_parts), np.vstack(a_parts), out=out.reshape(out_f, in_f))
        prune_inplace(out, density)

    params = {"density": density, "weights": [float(x) for x in w], "lam": lam}
    return dense_merge(prep, rank, NAME, params, combine, stacked=False)
