"""`dare` (Yu et al. 2023, Drop And REscale), then a linear or TIES combine.

Each source's dense delta keeps every entry independently with probability `density` and the
kept entries are divided by `density`, so the delta is unchanged in expectation. The mask is a
pure function of (seed, source index, module key, entry index) -- a SplitMix64 stream, see
`kernels.merge.sparsify.dare_mask` -- so it is fixed by the seed whatever the thread count.
Then `dare_combine="linear"`: lam * sum_i w_i * dare(delta_i) (task arithmetic), or `"ties"`:
sign election and disjoint mean over the dropped-and-rescaled deltas, without TIES' magnitude
trim (as PEFT's `dare_ties` and mergekit do), times lam.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.merge.assemble import dense_merge
from ruv_kernels.merge.generalized import sparse_merge_into
from ruv_kernels.merge.params import check_combine, check_density, check_lam, check_seed, check_sparse, check_weights
from ruv_kernels.merge.result import MergeError, MergeResult
from ruv_kernels.merge.sources import prepare
from ruv_kernels.merge.sparsify import dare_key, dare_mask

NAME = "dare"
PARAMS = ("density", "weights", "lam", "seed", "dare_combine", "rank")
REQUIRED = ("density",)
def mask_for(seed: int, source_index: int, module_key: str, n: int, density: float) -> np.ndarray:
    """The keep mask DARE applies to source `source_index`'s delta of `module_key` (n entries)."""
    return dare_mask(n, density, dare_key(seed, source_index, module_key))


def dare_dense(deltas: np.ndarray, density: float, keys, *, weights=None, lam: float = 1.0,
               combine: str = "linear", out: np.ndarray | None = None) -> np.ndarray:
    """DARE over dense deltas stacked on axis 0 ([T, ...], float32, C-contiguous).

    Drops and rescales `deltas` IN PLACE (task j with stream key keys[j]), then combines into
    `out` (shape deltas.shape[1:]) and returns it.
    """
    if not (isinstance(deltas, np.ndarray) and deltas.dtype == np.float32 and deltas.flags.c_contiguous
            and deltas.ndim >= 2):
        raise MergeError("deltas: expected a C-contiguous float32 array [tasks, ...] (it is modified in place)")
    density = check_density(density)
    lam = check_lam(lam)
    combine = check_combine(combine)
    ntask = deltas.shape[0]
    w = check_weights(weights, ntask, default=1.0)
    if len(keys) != ntask:
        raise MergeError(f"keys: expected one stream key per task ({ntask}), got {len(keys)}")
    stack = deltas.reshape(ntask, -1)
    if out is None:
        out = np.empty(deltas.shape[1:], dtype=np.float32)
    _combine(stack, density, keys, w, lam, combine, out.reshape(-1))
    return out


def _combine(stack, density, keys, w, lam, combine, out, pad_to=None):
    sparse_merge_into(stack, out, sparsify="random", density=density, weights=w, lam=lam,
                      consensus=combine == "ties", keys=keys, pad_to=pad_to)


def merge(sources, *, density, weights=None, lam=1.0, seed=0, dare_combine="linear",
          rank=None) -> MergeResult:
    """DARE each source's delta per module (seeded), combine, truncate to `rank`."""
    prep = prepare(sources, method=NAME)
    density, w, lam, rank, params = check_sparse(len(prep.sources), density=density, weights=weights, lam=lam, rank=rank)
    seed = check_seed(seed)
    combine = check_combine(dare_combine)

    def run(key, idx, stack, out):
        keys = [dare_key(seed, i, key) for i in idx]
        _combine(stack, density, keys, w[idx], lam, combine, out, pad_to=len(prep.sources))

    params.update(seed=seed, dare_combine=combine)
    return dense_merge(prep, rank, NAME, params, run)
