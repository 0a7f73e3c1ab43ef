"""TIES, DARE and magnitude pruning as one generalised method (as mergekit's
`generalized_task_arithmetic`): sparsify each task's delta ("magnitude" or "random", `sparsify`),
then combine, with or without sign consensus:

    method            sparsification   consensus
    ties              magnitude        yes: elect sign, disjoint mean
    dare, "linear"    random           no: weighted sum
    dare, "ties"      random           yes (no magnitude trim, as PEFT's dare_ties and mergekit)
    magnitude_prune   magnitude        no: weighted sum (PEFT's magnitude_prune)

times lam. The composition of small pure steps in `steps` is the reference; this runs the
fused kernels of `fused` (with consensus, the trim happens inside the fused pass).
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.merge.fused import fused_args, ties_fused, weighted_sum_into
from ruv_kernels.merge.select import trim_thresholds
from ruv_kernels.merge.sparsify import dare_apply, trim_inplace


def sparse_merge_into(stack: np.ndarray, out: np.ndarray, *, sparsify: str | None, density: float | None,
                      weights, lam: float, consensus: bool, keys=None, pad_to: int | None = None) -> np.ndarray:
    """Merge a C-contiguous [T, N] float32 stack of task deltas into out[N].

    `sparsify` None (or density None / >= 1 for "magnitude") keeps every entry. The stack is
    modified in place by "random" (drop and rescale) and by "magnitude" without consensus (trim);
    `keys` are the per-task DARE stream keys; `pad_to` (the merge's source count) gives the
    consensus kernel one signature per merge (`fused.fused_args`). Returns out.
    """
    ntask = stack.shape[0]
    w = np.asarray(weights, dtype=np.float64)
    thr = np.zeros(ntask, dtype=np.float32)
    if sparsify == "random":
        for j in range(ntask):
            dare_apply(stack[j], density, keys[j])
    elif sparsify == "magnitude" and density is not None and density < 1.0:
        thr = trim_thresholds(stack, density)
    if consensus:
        ties_fused(*fused_args(stack, thr, w, pad_to), float(lam), out)
        return out
    if sparsify == "magnitude":
        for j in range(ntask):
            trim_inplace(stack[j], thr[j])
    weighted_sum_into(stack, (lam * w).astype(np.float32), out)
    return out


def ties_into(stack: np.ndarray, density: float | None, weights, lam: float, out: np.ndarray,
              pad_to: int | None = None) -> np.ndarray:
    """TIES over a [T, N] float32 stack into out[N] (the stack is only read); density None or
    >= 1 means no trim (as in DARE-TIES)."""
    return sparse_merge_into(stack, out, sparsify="magnitude", density=density, weights=weights, lam=lam,
                             consensus=True, pad_to=pad_to)
