"""Numba kernels for the dense merge paths (TIES, DARE, magnitude prune).

Every kernel works on flat float32 arrays (a module's delta raveled, or a `[T, N]` stack of T
deltas) and writes into arrays the caller preallocated, in place where the step allows it, so
one set of buffers serves every module of a merge. Parallel loops split the index range into
fixed tiles, and DARE's mask is a counter-based hash of (key, index) rather than a stateful
RNG, so no result depends on the number of threads.

The small Python wrappers (`kth_largest_abs`, `ties_into`, ...) only size scratch space and
pack arguments; the work is in the `@njit` functions.
"""

from __future__ import annotations

import zlib

import numba
import numpy as np
from numba import njit, prange

from kernels.hashing import mix64 as _mix64
from kernels.hashing import mix64_py as _mix64_py

# Elements per parallel work item: large enough to amortise scheduling, small enough that two
# threads stay balanced. Loops run over slices of a tile (`y = x[lo:hi]; y[q]`) so Numba can
# prove the index non-negative and LLVM vectorises them.
TILE = 4096

_HI_BINS = 1 << 16  # radix select, pass 1: top 16 of the 31 magnitude bits
_LO_BINS = 1 << 15  # pass 2: the low 15 bits
_BLK = 64  # pass 2 prefilter block
_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


# --------------------------------------------------------------------------------------------
# Selection: the k-th largest |x| without sorting (two-pass radix select on the float bits).
# For non-negative IEEE floats the bit pattern is ordered like the value, so a histogram of
# the high bits finds the bucket holding the k-th largest, and one of its low bits the value.
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# TIES steps, separately (for clarity and tests) and fused (what the drivers run).
# --------------------------------------------------------------------------------------------


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


@njit(cache=True, parallel=True)
def elect_sign(stack, sign_out):
    """sign_out[p] = +1 where the summed mass sum_i stack[i, p] >= 0, else -1 (PEFT "total")."""
    ntask, n = stack.shape
    nt = (n + TILE - 1) // TILE
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, lo + TILE)
        s = sign_out[lo:hi]
        for q in range(s.size):
            s[q] = zero
        for i in range(ntask):
            row = stack[i, lo:hi]
            for q in range(s.size):
                s[q] += row[q]
        for q in range(s.size):
            s[q] = one if s[q] >= zero else -one


@njit(cache=True, parallel=True)
def disjoint_mean(stack, sign, weights, lam, out):
    """out[p] = lam * mean, over tasks whose entry is nonzero with the elected sign, of
    weights[i] * stack[i, p]; 0 where no task agrees (never NaN)."""
    ntask, n = stack.shape
    nt = (n + TILE - 1) // TILE
    lam32 = np.float32(lam)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, lo + TILE)
        sg = sign[lo:hi]
        o = out[lo:hi]
        for q in range(o.size):
            acc = zero
            cnt = zero
            s = sg[q]
            p = np.uintp(lo + q)
            for i in range(ntask):
                v = stack[i, p]
                agree = (v > zero and s > zero) or (v < zero and s < zero)
                acc += np.float32(weights[i]) * v if agree else zero
                cnt += one if agree else zero
            o[q] = lam32 * acc / max(cnt, one)


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


def fused_args(stack: np.ndarray, thr, weights):
    """The tuples `ties_fused` takes, from a [T, N] stack and per-task thresholds/weights."""
    ntask = stack.shape[0]
    rows = tuple(stack[i] for i in range(ntask))
    th = tuple(np.float32(x) for x in np.asarray(thr, dtype=np.float32).reshape(ntask))
    w = tuple(np.float32(x) for x in np.asarray(weights, dtype=np.float32).reshape(ntask))
    return rows, th, w


def ties_into(stack: np.ndarray, density: float | None, weights, lam: float, out: np.ndarray):
    """TIES over a [T, N] float32 stack of task deltas into out[N] (the stack is not modified).

    density None or >= 1 means no trim (as in DARE-TIES). Returns out.
    """
    ntask = stack.shape[0]
    if density is not None and density < 1.0:
        thr = trim_thresholds(stack, density)
    else:
        thr = np.zeros(ntask, dtype=np.float32)
    rows, th, w = fused_args(stack, thr, weights)
    ties_fused(rows, th, w, float(lam), out)
    return out


# --------------------------------------------------------------------------------------------
# DARE: Bernoulli(density) keep mask from a counter-based hash, rescale by 1/density.
# Entry p of a tensor with key K is kept iff (splitmix64(K + (p + 1) * GAMMA) >> 32) <
# floor(density * 2**32): the p-th output of a SplitMix64 stream seeded with K.
# --------------------------------------------------------------------------------------------


def dare_key(seed: int, source_index: int, module_key: str) -> int:
    """Stream key of one (seed, source, module) tensor: fixed by the seed, stable across runs."""
    h = zlib.crc32(module_key.encode("utf-8"))
    k = _mix64_py((int(seed) & _M64) + _GAMMA)
    k = _mix64_py(k ^ ((int(source_index) + 1) * _GAMMA & _M64))
    return _mix64_py(k ^ (h << 16))


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
            h = _mix64(z) >> sh
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
            mk[q] = (_mix64(z) >> sh) < kthr


def dare_mask(n: int, density: float, key: int) -> np.ndarray:
    """The keep mask `dare_inplace` applies to a tensor of n entries with this key."""
    mask = np.empty(int(n), dtype=np.bool_)
    _dare_mask_into(mask, np.uint64(key & _M64), keep_threshold(density))
    return mask


def dare_apply(x: np.ndarray, density: float, key: int) -> np.ndarray:
    """Mask + rescale a contiguous float32 array in place; returns it."""
    if not (x.dtype == np.float32 and x.flags.c_contiguous):
        raise TypeError("dare_apply needs a C-contiguous float32 array (it works in place)")
    dare_inplace(x.reshape(-1), float(density), np.uint64(key & _M64), keep_threshold(density))
    return x
