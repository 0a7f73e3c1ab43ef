"""The two drivers every method runs on: `linear_merge` (per-source coefficients, exact by
concatenating factors) and `dense_merge` (a combine step over the dense deltas, then truncation).

Either way the output has one rank R for all modules (zero-padded), the scale is folded into B
(PEFT then loads it with alpha = R), and the relative Frobenius reconstruction error is exact.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.merge.lowrank import compress_lowrank, lowrank_norm, truncate_dense
from ruv_kernels.merge.result import MergeResult, finish
from ruv_kernels.merge.sources import Prepared


def linear_merge(prep: Prepared, coeffs: dict[str, list[float]] | list[float], rank: int | None,
                 method: str, params: dict) -> MergeResult:
    """Merge sum_i c_i * delta_i per module by concatenating factors (exact), compressing only
    modules whose summed rank exceeds the requested `rank`.

    `coeffs` is one list of per-source coefficients, or a dict key -> list (per-module, slerp).
    """
    terms = {}
    exact_rank = {}
    for key in prep.keys:
        c = coeffs[key] if isinstance(coeffs, dict) else coeffs
        a_parts, b_parts = [], []
        for i in prep.present(key):
            ci = float(c[i])
            if ci == 0.0:
                continue
            a, b, s = prep.sources[i][key]
            a_parts.append(a)
            b_parts.append(b * np.float32(ci * s))
        terms[key] = (a_parts, b_parts)
        exact_rank[key] = sum(a.shape[0] for a in a_parts)
    out_rank = rank if rank is not None else max(1, max(exact_rank.values()))
    factors, norms, resids = {}, {}, {}
    compressed = []
    for key in prep.keys:
        out_f, in_f = prep.shapes[key]
        a_parts, b_parts = terms[key]
        if not a_parts:
            factors[key] = (np.zeros((0, in_f), np.float32), np.zeros((out_f, 0), np.float32))
            norms[key] = resids[key] = 0.0
            continue
        a_cat = np.vstack(a_parts)
        b_cat = np.hstack(b_parts)
        if exact_rank[key] <= out_rank:
            factors[key] = (a_cat, b_cat)
            norms[key] = lowrank_norm(a_cat, b_cat)
            resids[key] = 0.0
        else:
            a_k, b_k, res, full = compress_lowrank(a_cat, b_cat, out_rank)
            factors[key] = (a_k, b_k)
            norms[key] = full
            resids[key] = res
            compressed.append(key)
    params = dict(params)
    params["rank"] = rank
    params["compressed_modules"] = compressed
    return finish(prep, factors, norms, resids, out_rank, method, params)


def dense_target_rank(prep: Prepared, rank: int | None) -> int:
    """Rank the dense paths truncate to: requested, else the largest summed source rank."""
    if rank is not None:
        return rank
    best = 1
    for key in prep.keys:
        out_f, in_f = prep.shapes[key]
        r = sum(prep.rank_of(i, key) for i in prep.present(key))
        best = max(best, min(r, out_f, in_f))
    return best


class DenseBuffers:
    """Reusable [T, out*in] stacks and [out*in] outputs, one per shape, for the module loop."""

    def __init__(self):
        self._stacks: dict[tuple, np.ndarray] = {}
        self._outs: dict[tuple, np.ndarray] = {}

    def stack(self, ntask: int, n: int) -> np.ndarray:
        key = (ntask, n)
        if key not in self._stacks:
            self._stacks[key] = np.empty((ntask, n), dtype=np.float32)
        return self._stacks[key]

    def out(self, n: int) -> np.ndarray:
        if n not in self._outs:
            self._outs[n] = np.empty(n, dtype=np.float32)
        return self._outs[n]


def fill_deltas(prep: Prepared, key: str, idx: list[int], stack: np.ndarray) -> None:
    """stack[j] = dense delta s_i * B_i @ A_i of source idx[j] (float32 GEMM into place)."""
    out_f, in_f = prep.shapes[key]
    for j, i in enumerate(idx):
        a, b, s = prep.sources[i][key]
        np.matmul(b * np.float32(s), a, out=stack[j].reshape(out_f, in_f))


def dense_merge(prep: Prepared, rank: int | None, method: str, params: dict, combine,
                stacked: bool = True) -> MergeResult:
    """Per module: form the present sources' dense deltas into a reused [T, out*in] stack, let
    `combine(key, idx, stack, out)` write the merged delta into the reused `out`, and truncate
    it to the target rank (`truncate_dense`). With stacked=False no stack is formed (stack is None) and
    `combine` builds `out` itself."""
    target = dense_target_rank(prep, rank)
    bufs = DenseBuffers()
    factors, norms, resids = {}, {}, {}
    for key in prep.keys:
        out_f, in_f = prep.shapes[key]
        idx = prep.present(key)
        n = out_f * in_f
        out = bufs.out(n)
        stack = None
        if stacked:
            stack = bufs.stack(len(idx), n)
            fill_deltas(prep, key, idx, stack)
        combine(key, idx, stack, out)
        k = min(target, out_f, in_f)
        a_k, b_k, res, full = truncate_dense(out.reshape(out_f, in_f), k)
        factors[key] = (a_k, b_k)
        norms[key] = full
        resids[key] = res
    params = dict(params)
    params["rank"] = rank
    return finish(prep, factors, norms, resids, target, method, params)
