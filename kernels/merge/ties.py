"""`ties` (Yadav et al. 2023, TIES-Merging): trim, elect sign, disjoint merge, times lam.

Per module, on the dense deltas:
1. Trim each task's own delta to its top `density` fraction by magnitude (k = int(density * n)
   entries; found by radix selection, not sorting; entries tied with the k-th are all kept).
2. Elect each entry's sign from the summed kept mass (a zero sum elects +, as PEFT does).
3. Average w_i * delta_i over the tasks whose kept entry is nonzero with the elected sign
   (entries nobody agrees on are 0, never NaN), then multiply by lam.
Weights default to 1; as in PEFT's `merge_utils.ties`, the sign is elected on the unweighted
trimmed deltas and the weights scale what is averaged. The merged delta is not low-rank, so
it is truncated by SVD to the target rank and the reconstruction error is reported.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.merge.assemble import dense_merge
from ruv_kernels.merge.generalized import ties_into
from ruv_kernels.merge.params import check_density, check_lam, check_sparse, check_weights
from ruv_kernels.merge.result import MergeError, MergeResult
from ruv_kernels.merge.sources import prepare

NAME = "ties"
PARAMS = ("density", "weights", "lam", "rank")
REQUIRED = ("density",)


def ties_dense(deltas: np.ndarray, density: float, weights=None, lam: float = 1.0,
               out: np.ndarray | None = None) -> np.ndarray:
    """TIES over dense task deltas stacked on axis 0 (`[T, ...]`), returning `[...]`.

    `deltas` is only read; `out` (float32, shape deltas.shape[1:]) is written if given.
    """
    d = np.ascontiguousarray(deltas, dtype=np.float32)
    if d.ndim < 2:
        raise MergeError(f"deltas: expected [tasks, ...] with at least 2 dims, got shape {d.shape}")
    density = check_density(density)
    lam = check_lam(lam)
    w = check_weights(weights, d.shape[0], default=1.0)
    stack = d.reshape(d.shape[0], -1)
    if out is None:
        out = np.empty(d.shape[1:], dtype=np.float32)
    elif out.shape != d.shape[1:] or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise MergeError(f"out: expected a C-contiguous float32 array of shape {d.shape[1:]}")
    ties_into(stack, density, w, lam, out.reshape(-1))
    return out


def merge(sources, *, density, weights=None, lam=1.0, rank=None) -> MergeResult:
    """TIES-merge the sources' deltas per module, then truncate to `rank` (default: the summed
    source rank, capped by the module's shape)."""
    prep = prepare(sources, method=NAME)
    density, w, lam, rank, params = check_sparse(len(prep.sources), density=density, weights=weights, lam=lam, rank=rank)

    def combine(key, idx, stack, out):
        ties_into(stack, density, w[idx], lam, out, pad_to=len(prep.sources))

    return dense_merge(prep, rank, NAME, params, combine)
