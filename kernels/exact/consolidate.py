"""Exact consolidation: retrain on a new task while staying close to the old one, in closed form.

For this model the Fisher information of the old task's squared loss is its Gram matrix G_old,
so the penalty lam * tr((D - D_old) G_old (D - D_old)^T) is, up to a constant, the old task's
own loss increase around D_old (exact, not a diagonal estimate as EWC's). Adding it to the new
task's loss tr(D G_new D^T) - 2 tr(D C_new) + rr_new gives again a quadratic of the same form:

    G' = G_new + lam G_old      C' = C_new + lam G_old D_old^T      rr' = rr_new + lam tr(D_old G_old D_old^T)

so `solve_reduced_rank(G', C', ...)` minimises it exactly (before truncation to rank r).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ruv_kernels.exact.errors import ExactSolveError


class ConsolidatedStats(NamedTuple):
    G: np.ndarray
    C: np.ndarray


def _check(name, G_new, C_new, G_old, D_old, lam):
    d, o = C_new.shape
    if G_new.shape != (d, d) or G_old.shape != (d, d) or D_old.shape != (o, d):
        raise ExactSolveError(name, f"shapes do not fit: G_new {G_new.shape}, C_new {C_new.shape}, G_old {G_old.shape}, D_old {D_old.shape}")
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ExactSolveError(name, f"consolidation strength lam must be finite and >= 0, got {lam}")
    for what, a in (("G_new", G_new), ("C_new", C_new), ("G_old", G_old), ("D_old", D_old)):
        if not np.all(np.isfinite(a)):
            raise ExactSolveError(name, f"NaN or infinity in {what}")
    return lam


def consolidated_stats(G_new: np.ndarray, C_new: np.ndarray, G_old: np.ndarray, D_old: np.ndarray, lam: float,
                       *, name: str = "module") -> ConsolidatedStats:
    """(G', C') whose solution minimises L_new(D) + lam tr((D - D_old) G_old (D - D_old)^T).

    D_old [out, in] is the old checkpoint's dense delta (s B A). New arrays; inputs unchanged.
    """
    lam = _check(name, G_new, C_new, G_old, D_old, lam)
    G = G_new + lam * G_old
    C = C_new + lam * (G_old @ np.asarray(D_old, np.float64).T)
    return ConsolidatedStats(G, C)


def consolidation_offset(G_old: np.ndarray, D_old: np.ndarray, lam: float) -> float:
    """lam tr(D_old G_old D_old^T): add to rr_new to get the consolidated objective's value."""
    D = np.asarray(D_old, np.float64)
    return float(lam) * float(np.sum((D @ G_old) * D))


def consolidate_adapter(new: dict, old: dict, old_deltas: dict[str, np.ndarray], rank: int, scale, lam: float, *,
                        ridge_rel: float = 1e-4) -> dict:
    """{key: ExactSolution} minimising, per module, L_new(D) + lam tr((D - D_old) G_old (D - D_old)^T).

    new / old: {key: ModuleStats} of the new task's training data and the old task's (its
    stored statistics); old_deltas: {key: D_old [out, in]} (the old checkpoint's s B A). Modules
    that share both Grams (q/k/v of a layer) share one factorisation of G_new + lam G_old.
    """
    from ruv_kernels.exact.solve import ridge_factor, solve_reduced_rank

    if set(new) != set(old) or set(new) != set(old_deltas):
        odd = sorted((set(new) ^ set(old)) | (set(new) ^ set(old_deltas)))
        raise ExactSolveError(odd[0] if odd else "adapter", "new statistics, old statistics and old deltas name different modules")
    factors, out = {}, {}
    for key, st in new.items():
        s = scale[key] if isinstance(scale, dict) else scale
        G, C = consolidated_stats(st.G, st.C, old[key].G, old_deltas[key], lam, name=key)
        pair = (id(st.G), id(old[key].G))
        if pair not in factors:
            factors[pair] = ridge_factor(G, ridge_rel=ridge_rel, name=key)
        rr = st.rr + consolidation_offset(old[key].G, old_deltas[key], lam)
        out[key] = solve_reduced_rank(G, C, rank, s, rr=rr, q_sum=st.q_sum, n=st.n, name=key, factor=factors[pair])
    return out


def consolidation_sweep(new: dict, old: dict, old_deltas: dict[str, np.ndarray], rank: int, scale, lams, *,
                        new_val: dict, old_val: dict, ridge_rel: float = 1e-4) -> list[dict[str, float]]:
    """The trade-off curve: for each lam, the new and the old task's validation loss (means over modules)."""
    from ruv_kernels.exact.loss import loss_from_factors

    rows = []
    for lam in lams:
        sols = consolidate_adapter(new, old, old_deltas, rank, scale, lam, ridge_rel=ridge_rel)

        def mean_loss(stats):
            return float(np.mean([loss_from_factors(stats[k].G, stats[k].C, stats[k].rr, stats[k].q_sum,
                                                    sol.A, sol.B, sol.scale, name=k) for k, sol in sols.items()]))

        rows.append({"lam": float(lam), "new_val_loss": mean_loss(new_val), "old_val_loss": mean_loss(old_val)})
    return rows
