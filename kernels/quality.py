"""Per-task quality scores of synthetic examples: the original project's formulas, as Numba kernels.

The formulas (origin/FACTS.md) score an input row `x` of dimension `d`:

- coder:      0.6 + 0.4 * mean(|x|) over the first d/4 values
- researcher: 0.5 + 0.5 * mean(|x|)
- security:   0.7 + 0.3 * sum(|x| at even indices) / (d/2)
- architect:  0.6 + 0.4 * (1 - mean(|x_i - x_{i+1}|))
- reviewer:   0.5 + 0.5 * (1 - |mean(x)|)
- any other task name: uniform in [0.5, 1), seeded per example (it does not look at `x`).

Every score is capped at 1.0 as in the original, and also floored at 0.0: the scores are used as
regression weights, and a negative weight (possible for architect/reviewer on inputs far outside
[-1, 1)) would turn the weighted loss into something to maximise.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ruv_kernels.hashing import mix64 as _mix64

QUALITY_TASKS = ("coder", "researcher", "security", "architect", "reviewer")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _clamp01(v):
    if v > 1.0:
        return np.float32(1.0)
    if v < 0.0:
        return np.float32(0.0)
    return np.float32(v)


@njit(cache=True, parallel=True)
def coder_quality(X):
    """0.6 + 0.4 * mean |x| over the first d/4 values (at least one value)."""
    n, d = X.shape
    m = max(1, d // 4)
    q = np.empty(n, np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(m):
            acc += abs(X[i, j])
        q[i] = _clamp01(0.6 + 0.4 * acc / m)
    return q


@njit(cache=True, parallel=True)
def researcher_quality(X):
    """0.5 + 0.5 * mean |x|."""
    n, d = X.shape
    q = np.empty(n, np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            acc += abs(X[i, j])
        q[i] = _clamp01(0.5 + 0.5 * acc / d)
    return q


@njit(cache=True, parallel=True)
def security_quality(X):
    """0.7 + 0.3 * sum(|x| at even indices) / (d/2)."""
    n, d = X.shape
    half = d / 2.0
    q = np.empty(n, np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(0, d, 2):
            acc += abs(X[i, j])
        q[i] = _clamp01(0.7 + 0.3 * acc / half)
    return q


@njit(cache=True, parallel=True)
def architect_quality(X):
    """0.6 + 0.4 * (1 - mean |x_i - x_{i+1}|) over the d-1 neighbouring pairs."""
    n, d = X.shape
    pairs = max(1, d - 1)
    q = np.empty(n, np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(d - 1):
            acc += abs(X[i, j + 1] - X[i, j])
        q[i] = _clamp01(0.6 + 0.4 * (1.0 - acc / pairs))
    return q


@njit(cache=True, parallel=True)
def reviewer_quality(X):
    """0.5 + 0.5 * (1 - |mean x|)."""
    n, d = X.shape
    q = np.empty(n, np.float32)
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            acc += X[i, j]
        q[i] = _clamp01(0.5 + 0.5 * (1.0 - abs(acc / d)))
    return q


@njit(cache=True, parallel=True)
def uniform_quality(n, key):
    """Uniform in [0.5, 1) per example, a pure function of (key, row) so it is order-free."""
    q = np.empty(n, np.float32)
    for i in prange(n):
        bits = _mix64(np.uint64(key) + np.uint64(i + 1) * _GOLDEN) >> np.uint64(40)
        q[i] = np.float32(0.5) + np.float32(bits) * np.float32(2.0 ** -25)
    return q


def quality_scores(task: str, X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Quality `q [n] float32` of the rows of `X [n, d]` by the task's formula (see module doc).

    `seed` only matters for task names without a formula (seeded uniform [0.5, 1)).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"quality input must be a 2-D array [n, d] with d >= 1, got shape {X.shape}")
    if X.dtype != np.float32 and X.dtype != np.float64:
        X = X.astype(np.float32)
    if task == "coder":
        return coder_quality(X)
    if task == "researcher":
        return researcher_quality(X)
    if task == "security":
        return security_quality(X)
    if task == "architect":
        return architect_quality(X)
    if task == "reviewer":
        return reviewer_quality(X)
    return uniform_quality(X.shape[0], np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF))
