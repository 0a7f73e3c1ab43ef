"""Fused streaming kernels of the dense combine steps: each reads the T task deltas once and
writes the merged delta once. They are optimisations of the reference compositions in `steps`
(tests hold them equal on odd sizes that cross tile boundaries).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ruv_kernels.merge.sparsify import TILE


@njit(cache=True, parallel=True)
def ties_fused(rows, thr, weights, lam, out):
    """Trim + sign election + disjoint mean in one streaming pass over T task deltas.

    `rows`, `thr`, `weights` are tuples of length T (flat float32 deltas, trim thresholds,
    weights). Entry (i, p) takes part iff |rows[i][p]| >= thr[i] (the task's own trim); the
    sign is that of the summed kept mass (>= 0 gives +); out[p] = lam * (sum of weights[i] *
    rows[i][p] over kept entries with the elected sign) / max(their count, 1). Tuples make T a
    compile-time constant, so the task loops unroll, each entry stays in registers and the
    tile loop vectorises: the inputs are read once and `out` written once.
    """
    n = out.size
    ntask = len(rows)
    nt = (n + TILE - 1) // TILE
    lam32 = np.float32(lam)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, lo + TILE)
        o = out[lo:hi]
        for q in range(hi - lo):
            p = np.uintp(lo + q)  # unsigned: no wraparound select, so loads stay contiguous
            mass = zero
            for i in range(ntask):
                v = rows[i][p]
                mass += v if abs(v) >= thr[i] else zero
            sg = one if mass >= zero else -one
            acc = zero
            cnt = zero
            for i in range(ntask):
                v = rows[i][p]
                keep = (abs(v) >= thr[i]) & (v * sg > zero)  # bitwise &: no branches
                acc += weights[i] * v if keep else zero
                cnt += one if keep else zero
            o[q] = lam32 * acc / (cnt if cnt > one else one)


@njit(cache=True, parallel=True)
def weighted_sum_into(stack, coeffs, out):
    """out[p] = sum_i coeffs[i] * stack[i, p] (the linear combine after DARE)."""
    ntask, n = stack.shape
    nt = (n + TILE - 1) // TILE
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, lo + TILE)
        o = out[lo:hi]
        row = stack[0, lo:hi]
        c0 = np.float32(coeffs[0])
        for q in range(o.size):
            o[q] = c0 * row[q]
        for i in range(1, ntask):
            ci = np.float32(coeffs[i])
            row = stack[i, lo:hi]
            for q in range(o.size):
                o[q] += ci * row[q]


def fused_args(stack: np.ndarray, thr, weights, pad_to: int | None = None):
    """The tuples `ties_fused` takes, from a [T, N] stack and per-task thresholds/weights.

    `pad_to` appends zero tasks (weight 0) up to that many: a zero entry adds nothing to the
    mass, never agrees with a sign and so never counts, so the result is exactly the same, and
    a merge whose modules are held by different numbers of sources compiles `ties_fused` once
    (the tuple length is part of its signature) instead of once per count.
    """
    ntask = stack.shape[0]
    rows = tuple(stack[i] for i in range(ntask))
    th = tuple(np.float32(x) for x in np.asarray(thr, dtype=np.float32).reshape(ntask))
    w = tuple(np.float32(x) for x in np.asarray(weights, dtype=np.float32).reshape(ntask))
    if pad_to is not None and pad_to > ntask:
        zero = np.zeros(stack.shape[1], np.float32)
        extra = pad_to - ntask
        rows, th, w = rows + (zero,) * extra, th + (np.float32(0.0),) * extra, w + (np.float32(0.0),) * extra
    return rows, th, w
