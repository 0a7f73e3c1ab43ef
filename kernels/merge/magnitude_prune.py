"""`magnitude_prune` (PEFT's `merge_utils.magnitude_prune`): prune each task's delta to its top
`density` fraction by magnitude, then the (weighted) sum, times lam, per module.

merged = lam * sum_i w_i * prune(delta_i, density), weights default 1; TIES without the sign
election. The merged delta is truncated by SVD to the target rank and the error is reported.
To prune the merged delta instead, use `prune_merged`.
"""

from __future__ import annotations

from ruv_kernels.merge.assemble import dense_merge
from ruv_kernels.merge.generalized import sparse_merge_into
from ruv_kernels.merge.params import check_sparse
from ruv_kernels.merge.result import MergeResult
from ruv_kernels.merge.sources import prepare

NAME = "magnitude_prune"
PARAMS = ("density", "weights", "lam", "rank")
REQUIRED = ("density",)


def merge(sources, *, density, weights=None, lam=1.0, rank=None) -> MergeResult:
    """Each task pruned by magnitude, then the weighted sum per module, truncated to `rank`."""
    prep = prepare(sources, method=NAME)
    density, w, lam, rank, params = check_sparse(len(prep.sources), density=density, weights=weights, lam=lam, rank=rank)

    def combine(key, idx, stack, out):
        sparse_merge_into(stack, out, sparsify="magnitude", density=density, weights=w[idx], lam=lam,
                          consensus=False)

    return dense_merge(prep, rank, NAME, params, combine)
