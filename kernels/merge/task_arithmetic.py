"""`task_arithmetic` (Ilharco et al. 2023): lam * sum_i w_i * delta_i with signed weights.

No normalisation: a negative weight subtracts a task ("forgetting by negation") and lam scales
the whole task vector. Linear, hence exact at the summed rank.
"""

from __future__ import annotations

from ruv_kernels.merge.assemble import linear_merge
from ruv_kernels.merge.params import check_lam, check_rank, check_weights
from ruv_kernels.merge.result import MergeResult
from ruv_kernels.merge.sources import prepare

NAME = "task_arithmetic"
PARAMS = ("weights", "lam", "rank")
REQUIRED: tuple[str, ...] = ()


def merge(sources, *, weights=None, lam=1.0, rank=None) -> MergeResult:
    """lam times the weighted (default all 1) sum of the deltas per module."""
    prep = prepare(sources, method=NAME)
    rank = check_rank(rank)
    lam = check_lam(lam)
    w = check_weights(weights, len(prep.sources), default=1.0)
    coeffs = [lam * float(x) for x in w]
    return linear_merge(prep, coeffs, rank, NAME, {"weights": [float(x) for x in w], "lam": lam})
