"""The rank-r optimum of a module whose output rows fall into groups that read different inputs.

Fitting v_proj through attention: the rows of v_proj's delta D [K, in] that belong to key/value
group g change the attention output only through that group's attention-mixed inputs, so group
g has its own Gram G_g and cross term C_g [in, m_g], and the objective is

    sum_g tr(D_g H_g D_g^T) - 2 tr(D_g C_g),   H_g = G_g + lam_g I,   rank(D) <= r.

With one group (or equal Grams) this is reduced-rank ridge regression (`solve_reduced_rank`);
with different Grams there is no closed form. Alternating least squares on D = B A:

- for fixed A [r, in], each B_g = C_g^T A^T (A H_g A^T)^-1 exactly;
- for fixed B, A solves sum_g (B_g^T B_g) A H_g = sum_g B_g^T C_g^T, a symmetric positive
  definite linear system in r * in unknowns, by conjugate gradients preconditioned with
  (sum_g B_g^T B_g)^-1 Y Hbar^-1 (exact when the Grams are equal). One product costs
  `groups * (r^2 in + r in^2)`; nothing of size (r in)^2 is formed.

It starts from the pooled-Gram projection of the per-group ridge solutions, and each half step
minimises exactly, so the objective never increases (reported per iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.sparse.linalg import LinearOperator, cg

from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.finite import is_finite


@dataclass(frozen=True)
class GroupedSolution:
    """Balanced PEFT factors with `scale * B @ A = D` ([K, in], groups stacked in order) and the
    objective after each alternating step (the first entry is the starting point's)."""

    A: np.ndarray           # [r, in] float32
    B: np.ndarray           # [K, r] float32
    objectives: tuple[float, ...]
    full_rank_objective: float  # the per-group ridge optimum, a lower bound for any rank


def _check(name, grams, crosses, rank, ridge_rel):
    if not grams or len(grams) != len(crosses):
        raise ExactSolveError(name, f"need one Gram per cross term, got {len(grams)} and {len(crosses)}")
    d = np.asarray(grams[0]).shape[0]
    for g, (G, C) in enumerate(zip(grams, crosses)):
        if np.shape(G) != (d, d) or np.ndim(C) != 2 or np.shape(C)[0] != d:
            raise ExactSolveError(name, f"group {g}: statistics shapes do not fit: G {np.shape(G)}, C {np.shape(C)}, inputs {d}")
        if not (is_finite(G) and is_finite(C)):
            raise ExactSolveError(name, f"group {g}: NaN or infinity in the statistics")
    K = sum(np.shape(C)[1] for C in crosses)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(d, K):
        raise ExactSolveError(name, f"rank {rank!r} must be an integer between 1 and min(in, out) = {min(d, K)}")
    if not np.isfinite(ridge_rel) or ridge_rel <= 0:
        raise ExactSolveError(name, f"ridge_rel must be finite and > 0 (each group's Gram needs it), got {ridge_rel}")
    return d


def _objective(Hs, Cs, Bs, A) -> float:
    total = 0.0
    for H, C, B in zip(Hs, Cs, Bs):
        P = B @ A
        total += float(np.sum((P @ H) * P) - 2.0 * np.sum(P * C.T))
    return total


def _best_B(Hs, Cs, A):
    """Each group's exact B_g for fixed A."""
    out = []
    for H, C in zip(Hs, Cs):
        S = A @ H @ A.T
        out.append(cho_solve(cho_factor(S), A @ C).T)
    return out


def solve_grouped_reduced_rank(grams, crosses, rank: int, scale: float, *, ridge_rel: float, iters: int = 8,
                               name: str = "module") -> GroupedSolution:
    """The rank-`rank` fit of the grouped objective above (ALS from the pooled start)."""
    d = _check(name, grams, crosses, rank, ridge_rel)
    if not np.isfinite(scale) or scale <= 0:
        raise ExactSolveError(name, f"scale must be finite and > 0, got {scale}")
    Hs = [np.asarray(G, np.float64) + ridge_rel * float(np.mean(np.diag(G))) * np.eye(d) for G in grams]
    Cs = [np.asarray(C, np.float64) for C in crosses]
    factors = []
    for g, H in enumerate(Hs):
        try:
            factors.append(cho_factor(H))
        except np.linalg.LinAlgError:
            raise ExactSolveError(name, f"group {g}: Gram + ridge is not positive definite (is G a Gram matrix?)") from None
    Ms = [cho_solve(f, C) for f, C in zip(factors, Cs)]            # per-group ridge optimum D_g^T
    full = -float(sum(np.sum(M * C) for M, C in zip(Ms, Cs)))
    L = np.linalg.cholesky(sum(Hs) / len(Hs))                     # the pooled Gram, factored once
    hbar = (L, True)
    D = np.concatenate(Ms, axis=1).T                                # [K, in]
    _, _, Vt = np.linalg.svd(D @ L, full_matrices=False)
    A = solve_triangular(L, Vt[:rank].T, lower=True, trans="T").T   # row space of the pooled projection
    Bs = _best_B(Hs, Cs, A)
    objectives = [_objective(Hs, Cs, Bs, A)]
    r = rank
    for _ in range(iters):
        Ks = [B.T @ B for B in Bs]
        K = sum(Ks)
        kbar = cho_factor(K + 1e-12 * np.trace(K) * np.eye(r))
        rhs = sum(B.T @ C.T for B, C in zip(Bs, Cs))               # [r, in]

        def apply(v, Ks=Ks):
            X = v.reshape(r, d)
            return sum(Kg @ X @ H for Kg, H in zip(Ks, Hs)).ravel()

        def precondition(v, kbar=kbar):
            return cho_solve(hbar, cho_solve(kbar, v.reshape(r, d)).T).T.ravel()

        op = LinearOperator((r * d, r * d), matvec=apply, dtype=np.float64)
        pre = LinearOperator((r * d, r * d), matvec=precondition, dtype=np.float64)
        solution, _ = cg(op, rhs.ravel(), x0=A.ravel(), M=pre, rtol=1e-10, maxiter=200)
        A = np.linalg.qr(solution.reshape(r, d).T)[0].T             # the subspace is what counts
        Bs = _best_B(Hs, Cs, A)
        objectives.append(_objective(Hs, Cs, Bs, A))
        if objectives[-2] - objectives[-1] <= 1e-9 * abs(objectives[-2]):
            break
    # balance: D = B A = Qb (Rb Ra^T) Qa^T; the SVD of the small middle gives D = U S V^T
    Qb, Rb = np.linalg.qr(np.concatenate(Bs, axis=0))
    Qa, Ra = np.linalg.qr(A.T)
    u, s, vt = np.linalg.svd(Rb @ Ra.T)
    root = np.sqrt(s / scale)
    B = ((Qb @ u) * root).astype(np.float32)
    A = (root[:, None] * (vt @ Qa.T)).astype(np.float32)
    return GroupedSolution(A=A, B=B, objectives=tuple(objectives), full_rank_objective=full)
