"""`weighted`: a convex-style combination sum_i (w_i / sum_j w_j) * delta_i.

The weights are normalised so they express proportions; weights that sum to zero have no
proportions and are rejected. Linear, hence exact at the summed rank.
"""

from __future__ import annotations

from ruv_kernels.merge.assemble import linear_merge
from ruv_kernels.merge.params import check_rank, check_weights
from ruv_kernels.merge.result import MergeError, MergeResult
from ruv_kernels.merge.sources import prepare

NAME = "weighted"
PARAMS = ("weights", "rank")
REQUIRED = ("weights",)


def normalise(weights, n: int):
    """w / sum(w); MergeError when the sum is zero (relative to the weights' size)."""
    w = check_weights(weights, n, default=None)
    total = float(w.sum())
    if abs(total) <= 1e-12 * float(abs(w).sum()) or float(abs(w).sum()) == 0.0:
        raise MergeError(f"weights: must not sum to zero (got {w.tolist()}, sum {total:g}); "
                         "use task_arithmetic for signed, unnormalised weights")
    return w / total


def merge(sources, *, weights, rank=None) -> MergeResult:
    """Normalised weighted sum of the deltas per module."""
    prep = prepare(sources, method=NAME)
    rank = check_rank(rank)
    w = normalise(weights, len(prep.sources))
    return linear_merge(prep, list(w), rank, NAME, {"weights": [float(x) for x in w]})
