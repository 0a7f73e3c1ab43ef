"""Numba kernels that check and prepare a Gram without temporaries the size of G."""

from __future__ import annotations

import math

from numba import njit

_TILE = 64


@njit(cache=True)
def gram_defect(G, tol):
    """0 if G is finite and symmetric to `tol` (relative to max |G|), 1 if not finite, 2 if not symmetric.

    Reads G once in 64 x 64 tile pairs (the transposed reads stay in cache); no allocation.
    """
    d = G.shape[0]
    big = 0.0
    for i in range(d):
        for j in range(d):
            v = G[i, j]
            if not math.isfinite(v):
                return 1
            a = abs(v)
            if a > big:
                big = a
    lim = tol * big
    for i0 in range(0, d, _TILE):
        for j0 in range(0, i0 + 1, _TILE):
            for i in range(i0, min(i0 + _TILE, d)):
                for j in range(j0, min(j0 + _TILE, i)):
                    if abs(G[i, j] - G[j, i]) > lim:
                        return 2
    return 0


@njit(cache=True)
def shifted_copy(G, lam, H):
    """H = G + diag(lam) (H preallocated [d, d]); returns min over i of the shifted diagonal."""
    d = G.shape[0]
    low = math.inf
    for i in range(d):
        for j in range(d):
            H[i, j] = G[i, j]
        H[i, i] += lam[i]
        if H[i, i] < low:
            low = H[i, i]
    return low
