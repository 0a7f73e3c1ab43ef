"""Streaming sufficient statistics: G += X^T diag(q) X and C += X^T diag(q) R in one pass over X.

Rows are gathered (Numba, `gather`) into one fixed-size chunk buffer as `sqrt(q_i) x_i`, skipping
rows with `q_i == 0`, and each full buffer goes to a BLAS rank-k update that accumulates straight
into the caller's float64 arrays (`dsyrk` for G: half the multiply-adds of a general product;
`dgemm` with beta = 1 for C). No copy of X or R is made: memory is the chunk buffers only.

precision:
  "float64" (default)  products and sums in float64 (the buffer holds float64 rows; float32 and
                       float16 inputs convert exactly, so only the sums round).
  "auto"               the precision of the data, as BLAS on it would use: "mixed" when X and
                       every R are float16/float32, "float64" when any of them is float64
                       (`trained_adapter`'s default through `statistics_precision`).
  "mixed"              products summed in float32 within one chunk (`chunk_rows` rows, BLAS
                       `ssyrk`/`sgemm`), chunks summed in float64. About twice the speed of
                       "float64" (float32 SIMD lanes are twice as wide) and 0.89-1.01x numpy's
                       float32 `X.T @ X` on the same data (quiet machine, BENCHMARKS.md); the
                       relative error of an entry grows with sqrt(chunk_rows) * 6e-8 instead of
                       1e-16 (bench: 0.8-1.6e-7 of max |G|, 2.5-4.7x below the error of numpy's
                       float32 result, which sums all rows in float32).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas

from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.gather import (
    HALF_TABLE,
    add_lower,
    gather_rows,
    mirror_lower,
    take_rows,
)

PRECISIONS = ("auto", "float64", "mixed")
_BUFFER_BYTES = 1 << 23  # about 8 MB per chunk buffer
_MIXED_CHUNK_ROWS = 512
_STORAGE = (np.float16, np.float32, np.float64)


def default_chunk_rows(d: int, precision: str = "float64") -> int:
    """Rows per chunk. float64: about 8 MB of buffer, at least 256 rows (BLAS runs near peak
    from there). mixed: the depth of each float32 sum, 512 rows up to 1536 inputs, 2048 above
    (each chunk's float32 triangle is added into G, d^2 / 2 entries: fewer rows cost speed, more
    cost accuracy; one thread, 20000 rows: at 3072 inputs 512 / 1024 / 2048 rows ran at 0.91 /
    0.95 / 0.99x numpy with error 1.1 / 1.3 / 1.6e-7 of max |G|, numpy's own 4.0e-7; at 768
    inputs 512 rows was fastest, 0.89x)."""
    if precision != "float64":
        return _MIXED_CHUNK_ROWS if d <= 1536 else 4 * _MIXED_CHUNK_ROWS
    return int(max(256, min(4096, _BUFFER_BYTES // max(1, d * 8))))


def _check_storage(name: str, what: str, A: np.ndarray, rows: int | None = None) -> None:
    if not isinstance(A, np.ndarray) or A.ndim != 2:
        raise ExactSolveError(name, f"{what} must be a 2-D array, got {getattr(A, 'shape', type(A))}")
    if A.dtype not in _STORAGE:
        raise ExactSolveError(name, f"{what} must be float16, float32 or float64, got {A.dtype}")
    if rows is not None and A.shape[0] != rows:
        raise ExactSolveError(name, f"{what} has {A.shape[0]} rows, expected {rows} (one per example)")


def _check_weights(name: str, q, n: int) -> np.ndarray:
    q = np.asarray(q)
    if q.shape != (n,):
        raise ExactSolveError(name, f"weights q must have shape ({n},), got {q.shape}")
    q = np.ascontiguousarray(q, dtype=np.float64)
    if not np.all(np.isfinite(q)) or np.any(q < 0):
        raise ExactSolveError(name, "weights q must be finite and >= 0 (0 excludes a row)")
    return q


def _check_target(name: str, what: str, T, shape: tuple) -> None:
    if not isinstance(T, np.ndarray) or T.dtype != np.float64 or T.shape != shape or not T.flags.c_contiguous:
        got = f"{T.dtype} {T.shape}" if isinstance(T, np.ndarray) else type(T).__name__
        raise ExactSolveError(name, f"{what} must be a C-contiguous float64 array of shape {shape}, got {got}")


def _readable(A: np.ndarray) -> np.ndarray:
    """What the Numba kernels read: float16 storage as its uint16 bit pattern (no copy)."""
    return A.view(np.uint16) if A.dtype == np.float16 else A


def resolve_precision(precision: str, *arrays: np.ndarray) -> str:
    """"auto" -> "float64" if any array is float64, else "mixed"; the other names as given."""
    if precision != "auto":
        return precision
    return "float64" if any(A.dtype == np.float64 for A in arrays) else "mixed"


def stream_stats(G, X, q, crosses=(), *, precision: str = "float64", chunk_rows: int | None = None,
                 name: str = "module"):
    """One pass over X: G += X^T Q X (if G is not None) and C += X^T Q R for each (C, R) in crosses.

    Returns (rows used, sum of their q, [sum_i q_i ||r_i||^2 for each cross]). Inputs are checked
    before anything is added, so a bad call changes nothing.
    """
    if precision not in PRECISIONS:
        raise ExactSolveError(name, f"precision must be one of {PRECISIONS}, got {precision!r}")
    _check_storage(name, "X", X)
    n, d = X.shape
    q = _check_weights(name, q, n)
    if G is not None:
        _check_target(name, "G", G, (d, d))
    for C, R in crosses:
        _check_storage(name, "R", R, rows=n)
        _check_target(name, "C", C, (d, R.shape[1]))
    precision = resolve_precision(precision, X, *(R for _, R in crosses))
    cap = int(chunk_rows) if chunk_rows else default_chunk_rows(d, precision)
    if cap < 1:
        raise ExactSolveError(name, f"chunk_rows must be >= 1, got {chunk_rows}")
    cap = min(cap, max(1, n))
    work = np.float64 if precision == "float64" else np.float32
    xbuf = np.empty((cap, d), work)
    rows = np.empty(cap, np.int64)
    rbufs = [np.empty((cap, R.shape[1]), work) for _, R in crosses]
    # mixed precision: float32 products of one chunk land here, then are added in float64
    gpart = np.empty((d, d), np.float32) if (G is not None and work is np.float32) else None
    cparts = [np.empty(C.shape, np.float32) if work is np.float32 else None for C, _ in crosses]
    xs = _readable(X)
    rr = [0.0] * len(crosses)
    used, qsum, start = 0, 0.0, 0
    while start < n:
        m, start, qs = gather_rows(xs, HALF_TABLE, q, start, xbuf, rows)
        if m == 0:
            break
        used += m
        qsum += qs
        xb = xbuf[:m]
        if G is not None:
            if gpart is None:  # lower triangle of G (= upper of the Fortran view G.T)
                blas.dsyrk(1.0, xb.T, beta=1.0, c=G.T, trans=0, lower=0, overwrite_c=1)
            else:
                blas.ssyrk(1.0, xb.T, beta=0.0, c=gpart.T, trans=0, lower=0, overwrite_c=1)
                add_lower(G, gpart)
        for k, (C, R) in enumerate(crosses):
            rb = rbufs[k][:m]
            rr[k] += take_rows(_readable(R), HALF_TABLE, q, rows, m, rb)
            # C^T [out, in] (Fortran view of C) += R_b^T X_b
            if cparts[k] is None:
                blas.dgemm(1.0, rb.T, xb.T, beta=1.0, c=C.T, trans_b=1, overwrite_c=1)
            else:
                part = cparts[k]
                blas.sgemm(1.0, rb.T, xb.T, beta=0.0, c=part.T, trans_b=1, overwrite_c=1)
                C += part
    if G is not None:
        mirror_lower(G)
    return used, qsum, rr


def accumulate_gram(G: np.ndarray, X: np.ndarray, q, *, precision: str = "float64",
                    chunk_rows: int | None = None, name: str = "module") -> tuple[int, float]:
    """G [in, in] float64 += X^T diag(q) X, in place; X [n, in] float16/32/64.

    X is read in place whatever its strides (C-contiguous rows are the fast case; a view such as
    a column slice works without a copy). Rows with q_i == 0 are skipped. Returns (rows used,
    their sum of q).
    """
    used, qsum, _ = stream_stats(G, X, q, (), precision=precision, chunk_rows=chunk_rows, name=name)
    return used, qsum


def accumulate_cross(C: np.ndarray, X: np.ndarray, R: np.ndarray, q, *, precision: str = "float64",
                     chunk_rows: int | None = None, name: str = "module") -> float:
    """C [in, out] float64 += X^T diag(q) R, in place. Returns sum_i q_i ||r_i||^2 of the rows used."""
    _, _, rr = stream_stats(None, X, q, ((C, R),), precision=precision, chunk_rows=chunk_rows, name=name)
    return rr[0]
