"""The optimality certificate of a trained adapter: how far each module is from its rank-r optimum.

For every module the adapter's loss and the exact rank-r optimum of the same weighted objective
on the same statistics are both computed from (G, C, rr, q_sum) alone, so any checkpoint,
whatever trained it, gets

    train_loss          mean over modules of L_m(s B A)         (kernels.train's L)
    optimal_train_loss  mean over modules of min_{rank r} L_m   (modules are independent)
    optimality_gap      train_loss / optimal_train_loss - 1

The optimum is the data loss of the reduced-rank solution with a vanishing ridge
(`ridge_rel`, default 1e-9 of mean(diag G)): the limit ridge -> 0 is the unregularised optimum,
and it stays defined when G is singular (fewer examples than inputs). Being the loss of a real
rank-r delta it can only exceed the true minimum, by at most ridge * ||D_0||^2 (relative ~1e-9),
so the reported gap is never larger than the true one by more than that. With validation
statistics, the optimum's validation loss is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.loss import loss_from_factors, loss_from_rows
from ruv_kernels.exact.solve import ExactSolution, ValidationData, ridge_factor, solve_reduced_rank
from ruv_kernels.exact.stats import ModuleStats

CERTIFICATE_RIDGE_REL = 1e-9


def relative_gap(loss: float, optimum: float) -> float:
    """loss / optimum - 1; an optimum of 0 gives 0 when the loss is 0 too, else infinity."""
    if optimum > 0:
        return loss / optimum - 1.0
    return 0.0 if loss <= 0 else float("inf")


@dataclass(frozen=True)
class ModuleCertificate:
    train_loss: float
    optimal_train_loss: float
    optimality_gap: float
    optimal_val_loss: float | None
    solution: ExactSolution


@dataclass(frozen=True)
class Certificate:
    train_loss: float
    optimal_train_loss: float
    optimality_gap: float
    optimal_val_loss: float | None
    modules: dict[str, ModuleCertificate]

    def metadata(self) -> dict[str, float]:
        """The figures an asset records (optimal_val_loss only when validation statistics were given)."""
        out = {"optimal_train_loss": self.optimal_train_loss, "optimality_gap": self.optimality_gap}
        if self.optimal_val_loss is not None:
            out["optimal_val_loss"] = self.optimal_val_loss
        return out


def _factors(key, entry):
    try:
        A, B, scale = entry
    except (TypeError, ValueError):
        raise ExactSolveError(key, "adapter entry must be (A [r, in], B [out, r], scale)") from None
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise ExactSolveError(key, f"factors A {A.shape} and B {B.shape} do not fit together")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
        raise ExactSolveError(key, "NaN or infinity in the adapter's factors")
    return A, B, float(scale)


def certificate(adapter: dict[str, tuple], stats: dict[str, ModuleStats], *,
                val_stats: dict | None = None,
                ridge_rel: float = CERTIFICATE_RIDGE_REL) -> Certificate:
    """Certify `adapter` ({key: (A, B, scale)}) against per-module training statistics.

    The rank of each module's optimum is the adapter's own rank there (A.shape[0]). val_stats:
    {key: ModuleStats or ValidationData} for the optimum's validation loss. Modules
    whose statistics share one Gram array (LayerStats views) share one factorisation.
    Raises ExactSolveError naming the module on mismatched keys, shapes or bad statistics.
    """
    if set(adapter) != set(stats):
        missing = sorted(set(adapter) ^ set(stats))
        raise ExactSolveError(missing[0], "adapter modules and statistics differ (present in only one of them)")
    if not adapter:
        raise ExactSolveError("adapter", "no modules to certify")
    if val_stats is not None and set(val_stats) != set(stats):
        missing = sorted(set(val_stats) ^ set(stats))
        raise ExactSolveError(missing[0], "validation statistics name other modules than the training statistics")
    factors: dict[int, object] = {}  # id(G) -> ridge factor, for Grams shared by a layer's modules
    modules = {}
    for key in adapter:
        A, B, scale = _factors(key, adapter[key])
        st = stats[key]
        if A.shape[1] != st.d_in or B.shape[0] != st.d_out:
            raise ExactSolveError(key, f"adapter shape {B.shape[0]}x{A.shape[1]} does not match statistics {st.d_out}x{st.d_in}")
        f = factors.get(id(st.G))
        if f is None:
            f = factors[id(st.G)] = ridge_factor(st.G, ridge_rel=ridge_rel, name=key)
        sol = solve_reduced_rank(st.G, st.C, A.shape[0], scale, rr=st.rr, q_sum=st.q_sum, n=st.n, name=key, factor=f)
        loss = loss_from_factors(st.G, st.C, st.rr, st.q_sum, A, B, scale, name=key)
        # the exact data loss of the optimum (before its factors are rounded to float32)
        best = (sol.optimum - sol.ridge_penalty) / (st.q_sum * st.d_out)
        val = None
        if val_stats is not None:
            vs = val_stats[key]
            if isinstance(vs, ValidationData):
                val = loss_from_rows(vs.X, vs.R, vs.q, sol.A, sol.B, scale, name=key)
            else:
                val = loss_from_factors(vs.G, vs.C, vs.rr, vs.q_sum, sol.A, sol.B, scale, name=key)
        modules[key] = ModuleCertificate(loss, best, relative_gap(loss, best), val, sol)
    train = float(np.mean([m.train_loss for m in modules.values()]))
    best = float(np.mean([m.optimal_train_loss for m in modules.values()]))
    val = None if val_stats is None else float(np.mean([m.optimal_val_loss for m in modules.values()]))
    return Certificate(train, best, relative_gap(train, best), val, modules)
