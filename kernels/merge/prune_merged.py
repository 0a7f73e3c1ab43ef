"""`prune_merged`: the (weighted) sum of the deltas, keeping its top `density` fraction of entries
by magnitude, per module.

merged = prune(lam * sum_i w_i * delta_i, density), weights default 1. The sum is one GEMM of
the concatenated factors, the threshold is found by selection (as in TIES) and applied in
place. This prunes what is actually served; `magnitude_prune` (PEFT's function of that name)
prunes each task before summing. (Until this name existed, `magnitude_prune` did this.)
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.merge.assemble import dense_merge
from ruv_kernels.merge.params import check_sparse
from ruv_kernels.merge.result import MergeResult
from ruv_kernels.merge.sources import prepare
from ruv_kernels.merge.sparsify import prune_inplace

NAME = "prune_merged"
PARAMS = ("density", "weights", "lam", "rank")
REQUIRED = ("density",)


def merge(sources, *, density, weights=None, lam=1.0, rank=None) -> MergeResult:
    """Magnitude-pruned weighted sum per module, truncated to `rank`."""
    prep = prepare(sources, method=NAME)
    density, w, lam, rank, params = check_sparse(len(prep.sources), density=density, weights=weights, lam=lam, rank=rank)

    def combine(key, idx, stack, out):
        out_f, in_f = prep.shapes[key]
        a_parts, b_parts = [], []
        for i in idx:
            a, b, s = prep.sources[i][key]
            a_parts.append(a)
            b_parts.append(b * np.float32(lam * w[i] * s))
        np.matmul(np.hstack(b_parts), np.vstack(a_parts), out=out.reshape(out_f, in_f))
        prune_inplace(out, density)

    return dense_merge(prep, rank, NAME, params, combine, stacked=False)
