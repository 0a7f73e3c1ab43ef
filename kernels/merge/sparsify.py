"""Sparsification of one task's delta, in place on a flat float32 array (mergekit's `sparsify`):

- "magnitude": keep the top int(density * n) entries by |x| (TIES' trim; threshold by selection,
  entries tied with the k-th are all kept), zero the rest;
- "random": DARE (Yu et al. 2023), keep each entry with probability `density` and divide the kept
  ones by `density`. The mask is a counter-based hash of (key, index): entry p of a tensor with
  key K is kept iff (splitmix64(K + (p + 1) * GAMMA) >> 32) < floor(density * 2**32), the p-th
  output of a SplitMix64 stream seeded with K, so it is fixed by the seed whatever the thread
  count.

Parallel loops split the index range into fixed tiles of TILE elements; loops run over slices of
a tile (`y = x[lo:hi]; y[q]`) so Numba can prove the index non-negative and LLVM vectorises them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ruv_kernels.hashing import GOLDEN, MASK64, mix64, mix64_py, name_crc32
from ruv_kernels.merge.select import kth_largest_abs

TILE = 4096
SPARSIFIERS = ("magnitude", "random")


def trim_threshold(x: np.ndarray, density: float) -> np.float32:
    """Magnitude threshold of one task tensor: keep its top int(density * size) magnitudes."""
    return kth_largest_abs(x, int(density * x.size))


@njit(cache=True, parallel=True)
def trim_inplace(x, thr):
    """Zero every entry of flat `x` with |x| < thr, in place."""
    n = x.size
    zero = np.float32(0.0)
    nt = (n + TILE - 1) // TILE
    for t in prange(nt):
        y = x[t * TILE:min(n, (t + 1) * TILE)]
        for q in range(y.size):
            v = y[q]
            y[q] = v if abs(v) >= thr else zero


def prune_inplace(x: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the top int(density * size) magnitudes of a contiguous float32 array."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous):
        raise TypeError("prune_inplace needs a C-contiguous float32 array (it works in place)")
    flat = x.reshape(-1)
    if density < 1.0:
        trim_inplace(flat, trim_threshold(flat, density))
    return x


def dare_key(seed: int, source_index: int, module_key: str) -> int:
    """Stream key of one (seed, source, module) tensor: fixed by the seed, stable across runs."""
    h = name_crc32(module_key)
    k = mix64_py((int(seed) & MASK64) + GOLDEN)
    k = mix64_py(k ^ ((int(source_index) + 1) * GOLDEN & MASK64))
    return mix64_py(k ^ (h << 16))


def keep_threshold(density: float) -> np.uint64:
    """Integer threshold on the top 32 hash bits: keep probability is density (to 2**-32)."""
    return np.uint64(min(1 << 32, int(float(density) * 4294967296.0)))


@njit(cache=True, parallel=True)
def dare_inplace(x, density, key, kthr):
    """x[p] = x[p] / density where the mask keeps p, else 0 (flat float32 `x`, in place)."""
    n = x.size
    nt = (n + TILE - 1) // TILE
    d32 = np.float32(density)
    zero = np.float32(0.0)
    gamma = np.uint64(0x9E3779B97F4A7C15)
    sh = np.uint64(32)
    for t in prange(nt):
        lo = t * TILE
        y = x[lo:min(n, lo + TILE)]
        z = key + np.uint64(lo) * gamma
        for q in range(y.size):
            z += gamma  # the counter as an induction variable: no multiply per entry
            h = mix64(z) >> sh
            y[q] = y[q] / d32 if h < kthr else zero


@njit(cache=True, parallel=True)
def _dare_mask_into(mask, key, kthr):
    n = mask.size
    nt = (n + TILE - 1) // TILE
    gamma = np.uint64(0x9E3779B97F4A7C15)
    sh = np.uint64(32)
    for t in prange(nt):
        lo = t * TILE
        mk = mask[lo:min(n, lo + TILE)]
        z = key + np.uint64(lo) * gamma
        for q in range(mk.size):
            z += gamma
            mk[q] = (mix64(z) >> sh) < kthr


def dare_mask(n: int, density: float, key: int) -> np.ndarray:
    """The keep mask `dare_inplace` applies to a tensor of n entries with this key."""
    mask = np.empty(int(n), dtype=np.bool_)
    _dare_mask_into(mask, np.uint64(key & MASK64), keep_threshold(density))
    return mask


def dare_apply(x: np.ndarray, density: float, key: int) -> np.ndarray:
    """Mask + rescale a contiguous float32 array in place; returns it."""
    if not (x.dtype == np.float32 and x.flags.c_contiguous):
        raise TypeError("dare_apply needs a C-contiguous float32 array (it works in place)")
    dare_inplace(x.reshape(-1), float(density), np.uint64(key & MASK64), keep_threshold(density))
    return x
