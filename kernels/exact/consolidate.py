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

from kernels.exact.errors import ExactSolveError


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
