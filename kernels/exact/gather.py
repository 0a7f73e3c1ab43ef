"""Numba kernels that stream rows of X / R into fixed-size chunk buffers, weighted by sqrt(q).

Only rows with q_i > 0 are copied (a weight of 0 excludes the row), so a BLAS rank-k update of
the buffer adds exactly `sum_i q_i x_i x_i^T` of those rows. float16 storage is read as its bit
pattern (`uint16`) through a 65536-entry float32 table (`HALF_TABLE`): Numba has no float16
arithmetic, and the table lookup is exact.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

# float16 bit pattern -> its exact float32 value.
HALF_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def load(X, table, i, j):
    """X[i, j] as a number: X itself, or for float16 storage its uint16 bits through `table`."""
    return table[X[i, j]] if X.dtype == np.uint16 else X[i, j]


@overload(load, jit_options={"cache": True})
def _load_typed(X, table, i, j):
    if isinstance(X.dtype, types.Integer):
        return lambda X, table, i, j: table[X[i, j]]
    return lambda X, table, i, j: X[i, j]


@njit(cache=True)
def gather_rows(X, table, q, start, buf, rows):
    """Copy sqrt(q_i) * x_i into buf[0:m] for the rows i >= start with q_i > 0, until buf is full.

    X: [n, d] float32/float64, or the uint16 view of float16 storage (then `table` is HALF_TABLE;
    otherwise it is ignored); buf: [cap, d] float32 or float64; rows[k] receives the source row
    of buf[k]. Returns (m, next start row, sum of q over the copied rows).
    """
    n, d = X.shape
    cap = buf.shape[0]
    m = 0
    i = start
    qs = 0.0
    while i < n and m < cap:
        qi = q[i]
        if qi > 0.0:
            s = math.sqrt(np.float64(qi))
            for j in range(d):
                buf[m, j] = s * load(X, table, i, j)
            rows[m] = i
            qs += qi
            m += 1
        i += 1
    return m, i, qs


@njit(cache=True)
def take_rows(R, table, q, rows, m, buf):
    """buf[k] = sqrt(q_r) * R[r] for r = rows[k], k < m; returns sum_k q_r ||R[r]||^2 (float64).

    R as X in `gather_rows` (float16 storage as its uint16 view with `table`).
    """
    d = R.shape[1]
    rr = 0.0
    for k in range(m):
        r = rows[k]
        qi = np.float64(q[r])
        s = math.sqrt(qi)
        acc = 0.0
        for j in range(d):
            v = np.float64(load(R, table, r, j))
            acc += v * v
            buf[k, j] = s * v
        rr += qi * acc
    return rr


@njit(cache=True)
def mirror_lower(G):
    """Copy the lower triangle of the square G over its upper triangle (BLAS syrk fills one)."""
    d = G.shape[0]
    for i in range(d):
        for j in range(i + 1, d):
            G[i, j] = G[j, i]


@njit(cache=True)
def add_lower(G, P):
    """G[i, j] += P[i, j] on the lower triangle (j <= i); P may be float32, G is float64."""
    d = G.shape[0]
    for i in range(d):
        for j in range(i + 1):
            G[i, j] += P[i, j]


@njit(cache=True)
def count_positive(q):
    """How many weights are > 0 and their sum (float64); NaN weights count as neither."""
    c = 0
    s = 0.0
    for i in range(q.shape[0]):
        if q[i] > 0.0:
            c += 1
            s += q[i]
    return c, s
