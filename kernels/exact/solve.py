"""The exact rank-r optimum of one module's weighted ridge regression, factored for PEFT.

Problem (D = s B A, [out, in]; G, C from `stats`; Lambda = diag(lam)):

    minimise  sum_i q_i ||D x_i - r_i||^2 + tr(D Lambda D^T)  over rank(D) <= r
            = tr(D H D^T) - 2 tr(D C) + rr,   H = G + Lambda

With M = H^-1 C and H^-1 = Wh Wh^T (Wh = L^-T from the Cholesky H = L L^T, or U e^-1/2 from
an eigen-decomposition), the objective is ||Wh^-1 (D^T - M)||_F^2 + rr - tr(C^T M): the best
rank-r D^T is M projected onto the top-r right singular vectors V_r of the whitened cross term
K = Wh^T C (equivalently the top-r eigenvectors of C^T M = K^T K), D^T = M V_r V_r^T, and the
optimum is rr - (sum of the top r squared singular values of K). At rank min(in, out) this is
ridge regression itself.

Factoring: D = V_r P^T with P = M V_r = Wh (K V_r) [in, r]; the thin SVD P = U_p S W_p^T gives
D = (V_r W_p) S U_p^T, so B = V_r W_p sqrt(S / s), A = sqrt(S / s) U_p^T: s B A = D and
A A^T = B^T B = S / s (balanced). Cost: one Cholesky of H (shared by every module of a layer
through `ridge_factor`), one triangular solve with C, and an eigen-decomposition of the smaller
of K^T K / K K^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.linalg import blas, cho_solve, cholesky, eigh, solve_triangular
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

from ruv_kernels.exact.checks import gram_defect, shifted_copy
from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.gather import mirror_lower
from ruv_kernels.exact.loss import factor_terms

_EPS = np.finfo(np.float64).eps
_LANCZOS_MIN = 200       # below this size a dense eigensolver is as fast
_LANCZOS_FRACTION = 12   # Lanczos pays off while r <= size / 12


@dataclass(frozen=True)
class RidgeFactor:
    """H = G + diag(lam) factored once: whitening K = Wh^T C and back M V = Wh (K V)."""

    lam: np.ndarray           # [in] the ridge diagonal
    kind: str                 # "cholesky" (H = L L^T, L in `mat`) or "eigen" (H = U diag(e) U^T)
    mat: np.ndarray           # L (lower) or U
    inv_sqrt: np.ndarray | None = None  # e^-1/2 for "eigen"

    def whiten(self, C: np.ndarray) -> np.ndarray:
        if self.kind == "cholesky":
            return solve_triangular(self.mat, C, lower=True, check_finite=False)
        return self.inv_sqrt[:, None] * (self.mat.T @ C)

    def unwhiten(self, Y: np.ndarray) -> np.ndarray:
        if self.kind == "cholesky":
            return solve_triangular(self.mat, Y, lower=True, trans="T", check_finite=False)
        return self.mat @ (self.inv_sqrt[:, None] * Y)

    def solve(self, C: np.ndarray) -> np.ndarray:
        """M = H^-1 C (full-rank ridge regression)."""
        if self.kind == "cholesky":
            return cho_solve((self.mat, True), C, check_finite=False)
        return self.unwhiten(self.whiten(C))


def _check_gram(G, name):
    if not isinstance(G, np.ndarray) or G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 1:
        raise ExactSolveError(name, f"Gram must be a square 2-D array, got shape {getattr(G, 'shape', None)}")
    defect = gram_defect(np.ascontiguousarray(G, dtype=np.float64), 1e-9)
    if defect == 1:
        raise ExactSolveError(name, "NaN or infinity in the statistics (Gram G)")
    if defect == 2:
        raise ExactSolveError(name, "Gram G is not symmetric")


def ridge_diagonal(G: np.ndarray, ridge=None, ridge_rel=None, *, name: str = "module") -> np.ndarray:
    """lam [in] = ridge (a scalar or a vector [in]) + ridge_rel * mean(diag G); zeros if neither."""
    d = G.shape[0]
    lam = np.zeros(d, np.float64)
    if ridge is not None:
        r = np.asarray(ridge, np.float64)
        if r.ndim == 0:
            r = np.full(d, float(r))
        if r.shape != (d,):
            raise ExactSolveError(name, f"ridge must be a scalar or a vector of length {d}, got shape {r.shape}")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ExactSolveError(name, "ridge must be finite and >= 0")
        lam += r
    if ridge_rel is not None:
        rel = float(ridge_rel)
        if not np.isfinite(rel) or rel < 0:
            raise ExactSolveError(name, f"ridge_rel must be finite and >= 0, got {ridge_rel}")
        lam += rel * float(np.mean(np.diag(G)))
    return lam


def ridge_factor(G: np.ndarray, ridge=None, ridge_rel=None, *, name: str = "module") -> RidgeFactor:
    """Factor H = G + Lambda once (share it across the modules of a layer that share G).

    With a positive ridge: Cholesky (fails if G is not positive semi-definite, or if the ridge is
    too small to lift the condition number of G + Lambda below 1 / eps). With
    no ridge: an eigen-decomposition, and a Gram whose smallest eigenvalue is below
    10 in eps times the largest is singular: ExactSolveError (give ridge or ridge_rel).
    """
    _check_gram(G, name)
    lam = ridge_diagonal(G, ridge, ridge_rel, name=name)
    d = G.shape[0]
    if np.any(lam > 0):
        H = np.empty((d, d), np.float64)
        shifted_copy(G, lam, H)
        try:
            L = cholesky(H, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise ExactSolveError(name, "Gram + ridge is not positive definite (is G a Gram matrix?); increase ridge") from None
        piv = np.diag(L)
        if piv.min() <= 0 or (piv.min() / piv.max()) ** 2 < _EPS:  # condition beyond 1 / eps
            raise ExactSolveError(name, "Gram + ridge is numerically singular; increase ridge or ridge_rel")
        return RidgeFactor(lam=lam, kind="cholesky", mat=L)
    e, U = eigh(G, check_finite=False)
    top = float(e[-1])
    if top <= 0 or float(e[0]) <= d * _EPS * top * 10:
        raise ExactSolveError(name, f"singular Gram (fewer independent examples than inputs, {d}) and no ridge; set ridge or ridge_rel")
    return RidgeFactor(lam=lam, kind="eigen", mat=U, inv_sqrt=1.0 / np.sqrt(e))


def _gram_of_columns(K: np.ndarray, rows: bool) -> np.ndarray:
    """K^T K (rows=False) or K K^T (rows=True) by BLAS syrk (half the work of a product), full."""
    # BLAS reads a Fortran-ordered operand in place: K itself if it is (triangular solves return
    # it so), else K.T. syrk gives a^T a (trans=1) or a a^T (trans=0).
    a, t = (K, 1) if K.flags.f_contiguous else (K.T, 0)
    Sf = blas.dsyrk(1.0, a, trans=t if not rows else 1 - t, lower=0)  # upper (Fortran) = lower of Sf.T
    S = Sf.T
    mirror_lower(S)
    return S


def top_eigenpairs(S: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues [r] descending, eigenvectors [k, r]) of the largest r eigenvalues of symmetric S.

    Lanczos (ARPACK, tolerance 0 = machine precision, a fixed start vector) when r is small
    against the size (2-4x faster than a full tridiagonalisation at 768, same results to 1e-15);
    LAPACK's dsyevr on the top r otherwise, or when ARPACK does not converge.
    """
    k = S.shape[0]
    if k >= _LANCZOS_MIN and r <= k // _LANCZOS_FRACTION:
        try:
            w, V = eigsh(S, k=r, which="LA", tol=0, v0=np.ones(k))
        except (ArpackNoConvergence, ArpackError):
            pass
        else:
            order = np.argsort(w)[::-1]
            return w[order], V[:, order]
    w, V = eigh(S, subset_by_index=[k - r, k - 1], check_finite=False)
    order = np.argsort(w)[::-1]
    return w[order], V[:, order]


def top_right_singular(K: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(V_r [out, r], sigma [r] descending): top-r right singular pairs of K [in, out].

    Eigenpairs of the smaller Gram (K^T K or K K^T); a full SVD when the r-th singular value is
    too small for the K K^T route (V = K^T U / sigma) to be accurate.
    """
    d, o = K.shape
    if o <= d:
        w, V = top_eigenpairs(_gram_of_columns(K, rows=False), r)
        return V, np.sqrt(np.maximum(w, 0.0))
    w, U = top_eigenpairs(_gram_of_columns(K, rows=True), r)
    sig = np.sqrt(np.maximum(w, 0.0))
    if sig[-1] <= 1e-6 * max(sig[0], 1e-300):
        _, s, Vt = np.linalg.svd(K, full_matrices=False)
        return Vt[:r].T.copy(), s[:r]
    return (K.T @ U) / sig, sig


@dataclass(frozen=True)
class ExactSolution:
    """The rank-r optimum of one module, as PEFT factors, with the terms of its loss.

    `cross = tr(D C)`, `quad = tr(D G D^T)`, `ridge_penalty = tr(D Lambda D^T)` are computed from
    the returned float32 factors (never the dense delta); with rr and q_sum given, `train_loss` is
    the weighted mean squared error per output element on the statistics' data and `objective`
    adds the ridge term. `optimum` = rr - sum(whitened_singular_values^2): the objective's exact
    minimum at rank `rank` (sum form, before the factors are rounded to float32; also when
    select_rank keeps fewer directions).
    """

    name: str
    A: np.ndarray                       # [r, in] float32
    B: np.ndarray                       # [out, r] float32
    scale: float
    rank: int
    singular_values: np.ndarray         # [r] of the delta s B A (descending)
    whitened_singular_values: np.ndarray  # [r] top singular values of K (sqrt of eigenvalues of C^T M)
    lam: np.ndarray                     # [in] ridge diagonal used
    cross: float
    quad: float
    ridge_penalty: float
    rr: float | None = None
    q_sum: float | None = None
    optimum: float | None = None
    effective_rank: int | None = None   # directions kept (< rank when select_rank dropped some)
    val_losses: np.ndarray | None = None  # [rank] validation loss of the nested rank-k optima, k = 1..rank

    @property
    def val_loss(self) -> float | None:
        """Validation loss of the returned delta (when validation statistics were given)."""
        if self.val_losses is None:
            return None
        return float(self.val_losses[(self.effective_rank or self.rank) - 1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def train_loss(self) -> float | None:
        if self.rr is None or self.q_sum is None:
            return None
        return (self.rr - 2.0 * self.cross + self.quad) / (self.q_sum * self.d_out)

    @property
    def objective(self) -> float | None:
        if self.rr is None or self.q_sum is None:
            return None
        return (self.rr - 2.0 * self.cross + self.quad + self.ridge_penalty) / (self.q_sum * self.d_out)

    def delta(self) -> np.ndarray:
        """The dense delta s B A [out, in] (float64), for tests and small modules."""
        return self.scale * (self.B.astype(np.float64) @ self.A.astype(np.float64))


def _check_counts(name, rank, n, q_sum, rr):
    if n is not None:
        if int(n) == 0:
            raise ExactSolveError(name, "no examples above the quality threshold (n = 0)")
        if int(n) < rank:
            raise ExactSolveError(name, f"only {int(n)} examples above the quality threshold, fewer than the rank {rank}")
    if q_sum is not None:
        if not np.isfinite(q_sum):
            raise ExactSolveError(name, "NaN or infinity in the statistics (q_sum)")
        if q_sum <= 0:
            raise ExactSolveError(name, "no examples above the quality threshold (q_sum = 0)")
    if rr is not None and not np.isfinite(rr):
        raise ExactSolveError(name, "NaN or infinity in the statistics (rr)")


def nested_losses(G, C, rr, q_sum, V, P) -> np.ndarray:
    """Losses [r] (per output element) on statistics (G, C, rr, q_sum) of D_k = V_k P_k^T, k = 1..r.

    With V orthonormal, tr(D_k G D_k^T) = sum_{j<=k} p_j^T G p_j and tr(D_k C) = sum_{j<=k}
    p_j^T (C V)_j: every truncation of the solution at once, for O(in^2 r + in out r).
    """
    g = np.sum((G @ P) * P, axis=0)
    c = np.sum((C @ V) * P, axis=0)
    return (rr + np.cumsum(g - 2.0 * c)) / (q_sum * C.shape[1])


class ValidationData(NamedTuple):
    """Raw validation rows for `val=`: X [n, in], R [n, out] (float16/32/64), weights q [n] (0 = unused).

    The nested losses then cost O(n_val r (in + out)) and need no validation Gram at all.
    """

    X: np.ndarray
    R: np.ndarray
    q: np.ndarray


def nested_losses_from_data(X, R, q, V, P) -> np.ndarray:
    """`nested_losses` from raw rows: with h = P^T x and f = V^T r, ||V_k h_k - r||^2 =
    ||h_k||^2 - 2 h_k.f_k + ||r||^2 (V orthonormal). Copies only the rows with q > 0."""
    rows = np.flatnonzero(q > 0)
    w = q[rows].astype(np.float64)
    Xv = X[rows].astype(np.float64)
    Rv = R[rows].astype(np.float64)
    H = Xv @ P
    F = Rv @ V
    rr = float(np.sum(w * np.sum(Rv * Rv, axis=1)))
    terms = w @ (H * H - 2.0 * H * F)
    return (rr + np.cumsum(terms)) / (float(w.sum()) * R.shape[1])


def _val_losses(name, val, d, o, V, P) -> np.ndarray:
    """Validation losses of the nested truncations, from statistics or from ValidationData."""
    if isinstance(val, ValidationData):
        X, R, q = val
        q = np.asarray(q)
        if X.ndim != 2 or R.ndim != 2 or X.shape[1] != d or R.shape[1] != o or not (X.shape[0] == R.shape[0] == q.shape[0]):
            raise ExactSolveError(name, f"validation data shapes X {X.shape}, R {R.shape}, q {q.shape} do not match ({d}, {o})")
        if not np.all(np.isfinite(q)) or np.any(q < 0):
            raise ExactSolveError(name, "validation weights must be finite and >= 0")
        if not np.any(q > 0):
            raise ExactSolveError(name, "no validation examples with weight > 0 (q_sum = 0)")
        losses = nested_losses_from_data(X, R, q, V, P)
        if not np.all(np.isfinite(losses)):
            raise ExactSolveError(name, "NaN or infinity in the validation data")
        return losses
    for attr in ("G", "C", "rr", "q_sum"):
        if not hasattr(val, attr):
            raise ExactSolveError(name, f"validation statistics need G, C, rr and q_sum (missing {attr})")
    if val.G.shape != (d, d) or val.C.shape != (d, o):
        raise ExactSolveError(name, f"validation statistics shapes G {val.G.shape}, C {val.C.shape} do not match ({d}, {o})")
    if not (np.isfinite(val.rr) and np.isfinite(val.q_sum) and np.all(np.isfinite(val.C)) and np.all(np.isfinite(val.G))):
        raise ExactSolveError(name, "NaN or infinity in the validation statistics")
    if val.q_sum <= 0:
        raise ExactSolveError(name, "no validation examples with weight > 0 (q_sum = 0)")
    return nested_losses(val.G, val.C, float(val.rr), float(val.q_sum), V, P)


def solve_reduced_rank(G: np.ndarray, C: np.ndarray, rank: int, scale: float, *, ridge=None, ridge_rel=None,
                       rr: float | None = None, q_sum: float | None = None, name: str = "module",
                       n: int | None = None, factor: RidgeFactor | None = None, val=None,
                       select_rank: bool = False) -> ExactSolution:
    """Reduced-rank ridge regression on statistics G [in, in], C [in, out] -> PEFT factors.

    ridge: scalar or [in] vector added to diag(G); ridge_rel: times mean(diag G); both may be
    given (they add). factor: a `ridge_factor` of G computed once for modules sharing G (then
    ridge / ridge_rel must be None). n: examples used (checked against the rank when given).
    val: validation statistics (anything with G, C, rr, q_sum, e.g. a ModuleStats) or raw rows
    (`ValidationData(X, R, q)`, cheaper: no validation Gram): the
    validation loss of every nested truncation k = 1..rank is reported (`val_losses`); with
    select_rank the k of lowest validation loss is kept and the factors are padded with zero
    rows / columns to `rank` (a PEFT adapter of the configured rank, same delta). This is the
    exact solver's model selection, as early stopping on validation is the SGD path's.
    Raises ExactSolveError (one line naming `name`) on bad input; nothing is modified.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ExactSolveError(name, f"rank must be an integer, got {rank!r}")
    rank = int(rank)
    if not isinstance(C, np.ndarray) or C.ndim != 2:
        raise ExactSolveError(name, f"cross term C must be a 2-D array, got shape {getattr(C, 'shape', None)}")
    if not isinstance(G, np.ndarray) or G.ndim != 2 or G.shape[0] != C.shape[0]:
        raise ExactSolveError(name, f"statistics shapes do not fit: G {getattr(G, 'shape', None)}, C {C.shape}")
    d, o = C.shape
    if rank < 1 or rank > min(d, o):
        raise ExactSolveError(name, f"rank {rank} must be between 1 and min(in, out) = {min(d, o)}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ExactSolveError(name, f"scale must be a number, got {scale!r}") from None
    if not np.isfinite(scale) or scale <= 0:
        raise ExactSolveError(name, f"scale must be finite and > 0, got {scale}")
    if not np.all(np.isfinite(C)):
        raise ExactSolveError(name, "NaN or infinity in the statistics (cross term C)")
    _check_counts(name, rank, n, q_sum, rr)
    G = np.asarray(G, np.float64)
    C = np.asarray(C, np.float64)
    if factor is None:
        factor = ridge_factor(G, ridge, ridge_rel, name=name)
    else:
        if ridge is not None or ridge_rel is not None:
            raise ExactSolveError(name, "give either factor or ridge/ridge_rel, not both")
        _check_gram(G, name)
        if factor.mat.shape != (d, d):
            raise ExactSolveError(name, f"factor is for {factor.mat.shape[0]} inputs, statistics have {d}")
    if select_rank and val is None:
        raise ExactSolveError(name, "select_rank needs validation statistics (val)")
    K = factor.whiten(C)
    V, sig = top_right_singular(K, rank)
    P = factor.unwhiten(K @ V)                      # M V_r [in, r]
    val_losses = None if val is None else _val_losses(name, val, d, o, V, P)
    keep = int(np.argmin(val_losses)) + 1 if select_rank else rank
    Up, Sk, WpT = np.linalg.svd(P[:, :keep], full_matrices=False)
    root = np.sqrt(Sk / scale)
    S = np.zeros(rank)
    S[:keep] = Sk
    B = np.zeros((o, rank), np.float32)
    A = np.zeros((rank, d), np.float32)
    B[:, :keep] = (V[:, :keep] @ WpT.T) * root
    A[:keep] = root[:, None] * Up.T
    cross, quad, pen = factor_terms(G, C, A, B, scale, factor.lam)
    optimum = None if rr is None else float(rr) - float(np.sum(sig ** 2))
    return ExactSolution(name=name, A=A, B=B, scale=scale, rank=rank, singular_values=S,
                         whitened_singular_values=sig, lam=factor.lam, cross=cross, quad=quad,
                         ridge_penalty=pen, rr=None if rr is None else float(rr),
                         q_sum=None if q_sum is None else float(q_sum), optimum=optimum,
                         effective_rank=keep, val_losses=val_losses)
