"""Numba kernels of a LoRA module: forward `x -> s * B A x` and the dense delta `s * B @ A`.

The forward never forms the dense delta: it costs `r * (in + out)` per example instead of
`in * out`. Callers pass preallocated outputs so a serving loop allocates nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ruv_kernels.fastmath import FASTMATH


@njit(cache=True)
def forward_batch_into(X, A, B, scale, tmp, out):
    """out[n, out] = scale * (X @ A.T) @ B.T, with tmp [n, r] as scratch."""
    np.dot(X, A.T, tmp)
    np.dot(tmp, B.T, out)
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            out[i, j] *= scale
    return out


@njit(cache=True, fastmath=FASTMATH)
def forward_vector_into(x, A, B, scale, tmp, out):
    """out[out] = scale * B @ (A @ x), explicit vectorisable loops: no BLAS dispatch at this size."""
    r, n_in = A.shape
    n_out = B.shape[0]
    for k in range(r):
        acc = np.float32(0.0)
        for j in range(n_in):
            acc += A[k, j] * x[j]
        tmp[k] = acc * scale
    for i in range(n_out):
        acc = np.float32(0.0)
        for k in range(r):
            acc += B[i, k] * tmp[k]
        out[i] = acc
    return out


@njit(cache=True, fastmath=FASTMATH)
def forward_stacked_into(X, A, Bt, scale, tmp, out):
    """Same-shaped modules in one call, B pre-transposed: out[m] = scale * Bt[m].T @ (A[m] @ X[m]).

    X [m, in], A [m, r, in], Bt [m, r, out] (B transposed once, when a serving process loads the
    adapter), tmp [r], out [m, out]. One dispatch per token instead of one per module, and the
    B product becomes r contiguous axpys that vectorise fully.
    """
    n_mod, r, n_in = A.shape
    n_out = Bt.shape[2]
    for m in range(n_mod):
        for k in range(r):
            acc = np.float32(0.0)
            for j in range(n_in):
                acc += A[m, k, j] * X[m, j]
            tmp[k] = acc * scale
        for i in range(n_out):
            out[m, i] = 0.0
        for k in range(r):
            t = tmp[k]
            for i in range(n_out):
                out[m, i] += Bt[m, k, i] * t
    return out


@njit(cache=True)
def delta_into(A, B, scale, out):
    """out[out, in] = scale * B @ A (only for reporting, merging dense methods and tests)."""
    np.dot(B, A, out)
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            out[i, j] *= scale
    return out


def forward_batch(X: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """Allocate-and-call wrapper of `forward_batch_into` for float32 inputs."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != A.shape[1]:
        raise ValueError(f"input has shape {X.shape}; expected [n, {A.shape[1]}]")
    tmp = np.empty((X.shape[0], A.shape[0]), dtype=np.float32)
    out = np.empty((X.shape[0], B.shape[0]), dtype=np.float32)
    return forward_batch_into(X, _f32(A), _f32(B), np.float32(scale), tmp, out)


def forward_vector(x: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """Allocate-and-call wrapper of `forward_vector_into` for one float32 vector."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1 or x.shape[0] != A.shape[1]:
        raise ValueError(f"input has shape {x.shape}; expected [{A.shape[1]}]")
    tmp = np.empty(A.shape[0], dtype=np.float32)
    out = np.empty(B.shape[0], dtype=np.float32)
    return forward_vector_into(x, _f32(A), _f32(B), np.float32(scale), tmp, out)


def delta(A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """Dense `scale * B @ A` as a new float32 array."""
    out = np.empty((B.shape[0], A.shape[1]), dtype=np.float32)
    return delta_into(_f32(A), _f32(B), np.float32(scale), out)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
