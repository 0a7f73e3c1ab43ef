"""The loss of a delta from the statistics alone: no data needed (the certificate's arithmetic).

    sum_i q_i ||D x_i - r_i||^2 = rr - 2 tr(D C) + tr(D G D^T)

divided by `q_sum * out`: the weighted mean squared error per output element, the `L_m` that
`kernels.train` reports (the adapter's loss is the mean of L_m over its modules).
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.exact.errors import ExactSolveError


def _check(name, G, C, rr, q_sum):
    if G.ndim != 2 or G.shape[0] != G.shape[1] or C.ndim != 2 or C.shape[0] != G.shape[0]:
        raise ExactSolveError(name, f"statistics shapes do not fit: G {G.shape}, C {C.shape}")
    if not (np.isfinite(rr) and np.isfinite(q_sum)):
        raise ExactSolveError(name, "NaN or infinity in the statistics (rr or q_sum)")
    if q_sum <= 0:
        raise ExactSolveError(name, "no examples with weight > 0 (q_sum = 0)")


def sum_squared_error(G, C, rr, D) -> float:
    """sum_i q_i ||D x_i - r_i||^2 for a dense D [out, in] (float64 arithmetic)."""
    D = np.asarray(D, np.float64)
    return float(rr - 2.0 * np.sum(D * C.T) + np.sum((D @ G) * D))


def loss_from_stats(G: np.ndarray, C: np.ndarray, rr: float, q_sum: float, D: np.ndarray, *,
                    name: str = "module") -> float:
    """Weighted mean squared error (per output element) of the dense delta D [out, in]."""
    _check(name, G, C, rr, q_sum)
    D = np.asarray(D)
    if D.shape != (C.shape[1], G.shape[0]):
        raise ExactSolveError(name, f"delta must have shape {(C.shape[1], G.shape[0])}, got {D.shape}")
    return sum_squared_error(G, C, rr, D) / (q_sum * C.shape[1])


def factor_terms(G, C, A, B, scale, lam=None) -> tuple[float, float, float]:
    """(tr(D C), tr(D G D^T), tr(D diag(lam) D^T)) of D = scale * B @ A without forming D."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    BtB = B.T @ B
    cross = scale * float(np.sum(B * (A @ C).T))
    quad = scale * scale * float(np.sum((A @ G @ A.T) * BtB))
    pen = 0.0 if lam is None else scale * scale * float(np.sum(((A * lam) @ A.T) * BtB))
    return cross, quad, pen


def loss_from_factors(G: np.ndarray, C: np.ndarray, rr: float, q_sum: float, A: np.ndarray, B: np.ndarray,
                      scale: float, *, name: str = "module") -> float:
    """loss_from_stats of D = scale * B @ A, computed from the factors (r (in + out) in memory)."""
    _check(name, G, C, rr, q_sum)
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != G.shape[0] or B.shape[0] != C.shape[1] or A.shape[0] != B.shape[1]:
        raise ExactSolveError(name, f"factors A {A.shape}, B {B.shape} do not fit statistics G {G.shape}, C {C.shape}")
    cross, quad, _ = factor_terms(G, C, A, B, scale)
    return (rr - 2.0 * cross + quad) / (q_sum * C.shape[1])


def loss_from_rows(X: np.ndarray, R: np.ndarray, q, A: np.ndarray, B: np.ndarray, scale: float, *,
                   name: str = "module") -> float:
    """The same loss straight from rows X [n, in], R [n, out] with weights q (0 = unused).

    Copies only the rows with q > 0 (a validation split), never forms the dense delta.
    """
    q = np.asarray(q)
    rows = np.flatnonzero(q > 0)
    if rows.size == 0:
        raise ExactSolveError(name, "no examples with weight > 0 (q_sum = 0)")
    w = q[rows].astype(np.float64)
    H = X[rows].astype(np.float64) @ np.asarray(A, np.float64).T
    E = scale * (H @ np.asarray(B, np.float64).T) - R[rows].astype(np.float64)
    return float(w @ np.sum(E * E, axis=1)) / (float(w.sum()) * R.shape[1])
