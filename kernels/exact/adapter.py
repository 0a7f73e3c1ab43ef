"""Solve every module of an adapter: one factorisation per shared Gram, optional selection on validation.

The driver the `solver: exact` path needs: given per-module training statistics (e.g. from
`dataset_stats`, where q/k/v/gate/up of a layer share one Gram array), factor each distinct
`G + Lambda` once and solve each module on it. Dropout p adds its expected-value ridge
`p / (1 - p) diag(G)` (the same for every module sharing G, so the factor stays shared).
"""

from __future__ import annotations

from ruv_kernels.exact.dropout import dropout_ridge
from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.solve import ExactSolution, ridge_factor, solve_reduced_rank
from ruv_kernels.exact.stats import ModuleStats

DEFAULT_RIDGE_REL = 1e-4


def solve_adapter(train: dict[str, ModuleStats], rank: int, scale, *, val: dict | None = None,
                  ridge_rel: float = DEFAULT_RIDGE_REL, dropout: float = 0.0,
                  select_rank: bool = False) -> dict[str, ExactSolution]:
    """{key: ExactSolution} for every module of `train` at `rank` (scale: a float or {key: float}).

    ridge_rel: isotropic ridge relative to mean(diag G) (the default leaves the fit unchanged to
    4 digits on the synthetic presets and keeps singular Grams solvable); dropout: input
    dropout's diagonal ridge added to it; val ({key: ModuleStats or ValidationData}, e.g. from
    `dataset_stats` or `dataset_rows`) and select_rank: see `solve_reduced_rank`.
    """
    if not train:
        raise ExactSolveError("adapter", "no modules to solve")
    if val is not None and set(val) != set(train):
        odd = sorted(set(val) ^ set(train))
        raise ExactSolveError(odd[0], "validation statistics name other modules than the training statistics")
    factors = {}
    out = {}
    for key, st in train.items():
        s = scale[key] if isinstance(scale, dict) else scale
        f = factors.get(id(st.G))
        if f is None:
            extra = dropout_ridge(st.G, dropout, name=key) if dropout else None
            f = factors[id(st.G)] = ridge_factor(st.G, ridge=extra, ridge_rel=ridge_rel, name=key)
        out[key] = solve_reduced_rank(st.G, st.C, rank, s, rr=st.rr, q_sum=st.q_sum, n=st.n, name=key, factor=f,
                                      val=None if val is None else val[key], select_rank=select_rank)
    return out
