"""`average`: the plain mean of the deltas, each source weighing 1/n.

A module a source lacks counts as a zero delta for it, so averaging never inflates a module
that only some sources train. Linear, hence exact at the summed rank.
"""

from __future__ import annotations

from ruv_kernels.merge.assemble import linear_merge
from ruv_kernels.merge.params import check_rank
from ruv_kernels.merge.result import MergeResult
from ruv_kernels.merge.sources import prepare

NAME = "average"
PARAMS = ("rank",)
REQUIRED: tuple[str, ...] = ()


def merge(sources, *, rank=None) -> MergeResult:
    """Mean of the sources' deltas per module."""
    prep = prepare(sources, method=NAME)
    rank = check_rank(rank)
    n = len(prep.sources)
    coeffs = [1.0 / n] * n
    return linear_merge(prep, coeffs, rank, NAME, {"weights": coeffs})
