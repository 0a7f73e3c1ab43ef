"""Selection: the k-th largest |x| without sorting (two-pass radix select on the float bits).

For non-negative IEEE floats the bit pattern is ordered like the value, so a histogram of the
high bits finds the bucket holding the k-th largest, and one of its low bits the value. All
rows of a [T, N] stack are selected in the same two parallel passes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_HI_BINS = 1 << 16  # radix select, pass 1: top 16 of the 31 magnitude bits
_LO_BINS = 1 << 15  # pass 2: the low 15 bits
_BLK = 64  # pass 2 prefilter block


@njit(cache=True, inline="always")
def _low_segment(seg, high, h):
    """Count the low bits of the entries in bucket `high`. Few entries match, so a vectorised
    count over blocks of _BLK skips the blocks without any before the scalar histogram step."""
    hi32 = np.uint32(high)
    sh = np.uint32(15)
    mask = np.uint32(0xFFFF)
    nb = seg.size // _BLK
    for blk in range(nb + 1):
        s = seg[blk * _BLK:min(seg.size, (blk + 1) * _BLK)]
        m = 0
        for j in range(s.size):
            m += ((s[j] >> sh) & mask) == hi32
        if m:
            for j in range(s.size):
                b = s[j]
                if ((b >> sh) & mask) == hi32:
                    h[b & 0x7FFF] += 1


@njit(cache=True)
def _scan_from_top(hist, k):
    """Bin holding the k-th largest (1-based) and k's rank inside that bin."""
    nch, nbins = hist.shape
    cum = 0
    for b in range(nbins - 1, -1, -1):
        c = 0
        for ch in range(nch):
            c += hist[ch, b]
        if cum + c >= k:
            return b, k - cum
        cum += c
    return 0, k - cum


def _nchunks() -> int:
    return max(1, numba.get_num_threads())


def _radix_select(flat: np.ndarray, k: int) -> np.float32:
    return _rows_kth(flat.reshape(1, -1), k)[0]


def kth_largest_abs(x: np.ndarray, k: int) -> np.float32:
    """The k-th largest |x| of a finite float32 array, by radix selection (O(n), no sort).

    k <= 0 gives +inf (keep nothing) and k > x.size counts as x.size, so that
    `|x| >= kth_largest_abs(x, k)` is the top-k mask (ties at the threshold are all kept).
    (A sampled one-pass bracket was tried: its data-dependent compaction branch cost more than
    the second histogram pass it saves.)
    """
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if k <= 0 or flat.size == 0:
        return np.float32(np.inf)
    return _radix_select(flat, min(int(k), flat.size))


def trim_threshold(x: np.ndarray, density: float) -> np.float32:
    """TIES trim threshold of one task tensor: keep its top int(density * size) magnitudes."""
    return kth_largest_abs(x, int(density * x.size))


@njit(cache=True, parallel=True)
def _hist_high_rows(bits, hist):
    """Pass 1: per (row, chunk) histograms of the top 16 magnitude bits (sign bit dropped),
    one parallel region over T x chunks items."""
    ntask, nch = hist.shape[0], hist.shape[1]
    n = bits.shape[1]
    step = (n + nch - 1) // nch
    for item in prange(ntask * nch):
        i = item // nch
        c = item - i * nch
        h = hist[i, c]
        for j in range(h.size):
            h[j] = 0
        seg = bits[i, min(n, c * step):min(n, (c + 1) * step)]
        for p in range(seg.size):
            h[(seg[p] >> 15) & 0xFFFF] += 1


@njit(cache=True, parallel=True)
def _hist_low_rows(bits, highs, hist):
    """Pass 2: per (row, chunk) histograms of the low 15 bits of the entries of row i whose
    top bits equal highs[i] (the bucket holding its k-th largest)."""
    ntask, nch = hist.shape[0], hist.shape[1]
    n = bits.shape[1]
    step = (n + nch - 1) // nch
    for item in prange(ntask * nch):
        i = item // nch
        c = item - i * nch
        h = hist[i, c]
        for j in range(h.size):
            h[j] = 0
        _low_segment(bits[i, min(n, c * step):min(n, (c + 1) * step)], highs[i], h)


@njit(cache=True)
def _kth_rows_bits(stack, ks, hist_hi, hist_lo, out):
    """out[i] = bit pattern of the ks[i]-th largest |stack[i]|; hist_* are scratch."""
    bits = stack.view(np.uint32)
    ntask = stack.shape[0]
    _hist_high_rows(bits, hist_hi)
    highs = np.empty(ntask, dtype=np.int64)
    krem = np.empty(ntask, dtype=np.int64)
    for i in range(ntask):
        highs[i], krem[i] = _scan_from_top(hist_hi[i], ks[i])
    _hist_low_rows(bits, highs, hist_lo)
    for i in range(ntask):
        low, _ = _scan_from_top(hist_lo[i], krem[i])
        out[i] = np.uint32((highs[i] << 15) | low)


def _rows_kth(stack: np.ndarray, k: int) -> np.ndarray:
    """k-th largest |x| of every row of a C-contiguous [T, N] float32 stack (1 <= k <= N), all
    rows in the same two parallel passes (fewer fork/joins than row by row)."""
    ntask = stack.shape[0]
    nch = _nchunks()
    hist_hi = np.empty((ntask, nch, _HI_BINS), dtype=np.int32)
    hist_lo = np.empty((ntask, nch, _LO_BINS), dtype=np.int32)
    out = np.empty(ntask, dtype=np.uint32)
    _kth_rows_bits(stack, np.full(ntask, k, dtype=np.int64), hist_hi, hist_lo, out)
    return out.view(np.float32)


def trim_thresholds(stack: np.ndarray, density: float) -> np.ndarray:
    """Per-row TIES trim thresholds of a C-contiguous [T, N] float32 stack: each row keeps its
    own top int(density * N) magnitudes (+inf where that is none)."""
    ntask, n = stack.shape
    k = int(density * n)
    if k <= 0 or n == 0:
        return np.full(ntask, np.inf, dtype=np.float32)
    return _rows_kth(stack, min(k, n))
