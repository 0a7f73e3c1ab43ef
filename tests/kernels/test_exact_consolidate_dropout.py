"""Exact consolidation (limits and the direct minimiser) and dropout's ridge (Monte Carlo)."""

import numpy as np
import pytest

from ruv_kernels.exact import (ExactSolveError, consolidated_stats, consolidation_offset, dropout_ridge,
                           solve_reduced_rank)
from tests.kernels.exact_reference import problem, stats


def _tasks(d=7, o=5):
    Xn, Rn, qn = problem(200, d, o, seed=1)
    Xo, Ro, qo = problem(150, d, o, seed=2)
    new, old = stats(Xn, Rn, qn), stats(Xo, Ro, qo)
    D_old = solve_reduced_rank(old[0], old[1], min(d, o), 1.0).delta()
    return new, old, D_old


def test_consolidated_solution_minimises_the_penalised_objective():
    (Gn, Cn, rrn, _, _), (Go, _, _, _, _), D_old = _tasks()
    lam = 0.7
    Gc, Cc = consolidated_stats(Gn, Cn, Go, D_old, lam)
    D = solve_reduced_rank(Gc, Cc, 5, 1.0).delta()

    def penalised(D):
        E = D - D_old
        return np.sum((D @ Gn) * D) - 2 * np.sum(D * Cn.T) + rrn + lam * np.sum((E @ Go) * E)

    # the stationary point of the quadratic, solved directly from its normal equations
    D_direct = np.linalg.solve(Gn + lam * Go, Cn + lam * Go @ D_old.T).T
    np.testing.assert_allclose(D, D_direct, rtol=1e-4, atol=1e-6)
    rrc = rrn + consolidation_offset(Go, D_old, lam)
    assert np.sum((D @ Gc) * D) - 2 * np.sum(D * Cc.T) + rrc == pytest.approx(penalised(D), rel=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(30):
        assert penalised(D + 1e-2 * rng.standard_normal(D.shape)) > penalised(D)


def test_consolidation_limits_at_full_rank():
    (Gn, Cn, *_), (Go, *_), D_old = _tasks()
    D_new = solve_reduced_rank(Gn, Cn, 5, 1.0).delta()
    D0 = solve_reduced_rank(*consolidated_stats(Gn, Cn, Go, D_old, 1e-9), 5, 1.0).delta()
    Dinf = solve_reduced_rank(*consolidated_stats(Gn, Cn, Go, D_old, 1e9), 5, 1.0).delta()
    np.testing.assert_allclose(D0, D_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Dinf, D_old, rtol=1e-5, atol=1e-6)
    assert not np.allclose(D_new, D_old, atol=1e-2)  # the limits are different points


def test_consolidation_bad_input():
    (Gn, Cn, *_), (Go, *_), D_old = _tasks()
    with pytest.raises(ExactSolveError, match=r"^up_proj: consolidation strength lam"):
        consolidated_stats(Gn, Cn, Go, D_old, -1.0, name="up_proj")
    with pytest.raises(ExactSolveError, match="shapes do not fit"):
        consolidated_stats(Gn, Cn, Go, D_old.T, 1.0)


def test_dropout_ridge_formula_and_range():
    G = np.diag([1.0, 4.0]) + 0.5
    np.testing.assert_allclose(dropout_ridge(G, 0.2), 0.25 * np.diag(G))
    assert not dropout_ridge(G, 0.0).any()
    with pytest.raises(ExactSolveError, match=r"dropout p must be in \[0, 1\)"):
        dropout_ridge(G, 1.0)


def test_dropout_ridge_equals_the_expectation_over_masks():
    """Fitting on many dropped-out copies of the data converges to the ridge solution."""
    d, o, n, p, copies = 5, 3, 40, 0.3, 4000
    X, R, q = problem(n, d, o, seed=3, noise=0.5)
    G, C, rr, qs, _ = stats(X, R, q)
    exact = solve_reduced_rank(G, C, 3, 1.0, ridge=dropout_ridge(G, p)).delta()
    plain = solve_reduced_rank(G, C, 3, 1.0).delta()
    rng = np.random.default_rng(4)
    Gm, Cm = np.zeros((d, d)), np.zeros((d, o))
    X64, R64, q64 = X.astype(np.float64), R.astype(np.float64), q.astype(np.float64)
    for _ in range(copies):  # inverted dropout on the inputs, as PEFT applies it
        Xd = X64 * (rng.random(X.shape) >= p) / (1 - p)
        Gm += (Xd.T * q64) @ Xd
        Cm += (Xd.T * q64) @ R64
    mc = solve_reduced_rank(Gm / copies, Cm / copies, 3, 1.0).delta()
    err = np.linalg.norm(mc - exact) / np.linalg.norm(exact)
    assert err < 0.02
    assert np.linalg.norm(mc - plain) / np.linalg.norm(plain) > 5 * err  # and dropout really changed the fit
    # theory: the ridge shrinks the fit, more for inputs with more energy
    assert np.linalg.norm(exact) < np.linalg.norm(plain)


def test_consolidation_sweep_trades_the_new_task_for_the_old():
    from ruv_kernels.exact import ModuleStats, consolidate_adapter, consolidation_sweep

    def stats_of(seed):
        X, R, q = problem(300, 8, 6, seed=seed, rank_true=3)
        return {"q_proj": ModuleStats(8, 6).update(X, R, q)}

    new, old = stats_of(40), stats_of(41)
    D_old = {"q_proj": old["q_proj"].solve(6, 1.0).delta()}
    rows = consolidation_sweep(new, old, D_old, 6, 1.0, [0.0, 0.1, 1.0, 10.0, 1e3, 1e5], new_val=new, old_val=old)
    new_loss = [r["new_val_loss"] for r in rows]
    old_loss = [r["old_val_loss"] for r in rows]
    assert all(a < b for a, b in zip(new_loss, new_loss[1:]))  # on the training statistics the
    assert all(a > b for a, b in zip(old_loss, old_loss[1:]))  # trade-off is strictly monotone
    assert new_loss[0] == pytest.approx(new["q_proj"].solve(6, 1.0, ridge_rel=1e-4).train_loss, rel=1e-6)
    assert old_loss[-1] == pytest.approx(old["q_proj"].loss(D_old["q_proj"]), rel=1e-3)
    sol = consolidate_adapter(new, old, D_old, 2, 1.0, 1.0)["q_proj"]
    ref = solve_reduced_rank(*consolidated_stats(new["q_proj"].G, new["q_proj"].C, old["q_proj"].G, D_old["q_proj"], 1.0),
                             2, 1.0, ridge_rel=1e-4)
    np.testing.assert_allclose(sol.delta(), ref.delta(), rtol=1e-6, atol=1e-8)
    with pytest.raises(ExactSolveError, match="name different modules"):
        consolidate_adapter(new, {}, D_old, 2, 1.0, 1.0)
