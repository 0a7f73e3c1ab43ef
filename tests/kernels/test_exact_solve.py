"""The rank-r optimum against dense numpy references and brute force; its factors; bad input."""

import numpy as np
import pytest

from ruv_kernels.exact import (ExactSolveError, ModuleStats, loss_from_factors, loss_from_stats, ridge_factor,
                           solve_reduced_rank)
from tests.kernels.exact_reference import objective, problem, reduced_rank_eigh, ridge_lstsq, stats, weighted_loss

SHAPES = [(9, 5), (5, 9), (7, 7), (1, 4), (4, 1), (13, 3)]


def _fixture(d, o, seed=0, n=120, zero_every=5):
    X, R, q = problem(n, d, o, seed=seed, zero_every=zero_every)
    return X, R, q, stats(X, R, q)


@pytest.mark.parametrize("d,o", SHAPES)
def test_full_rank_is_ridge_regression(d, o):
    X, R, q, (G, C, rr, qs, n) = _fixture(d, o, seed=d * 10 + o)
    lam = 0.3
    sol = solve_reduced_rank(G, C, min(d, o), 1.0, ridge=lam, rr=rr, q_sum=qs, n=n)
    D_ref = ridge_lstsq(X, R, q, lam)
    np.testing.assert_allclose(sol.delta(), D_ref, rtol=2e-5, atol=2e-6)
    assert sol.train_loss == pytest.approx(weighted_loss(X, R, q, sol.delta()), rel=1e-9)


@pytest.mark.parametrize("d,o,rank", [(d, o, r) for d, o in SHAPES for r in (1, 2) if r <= min(d, o)])
def test_rank_r_matches_dense_formula_and_beats_brute_force(d, o, rank):
    X, R, q, (G, C, rr, qs, n) = _fixture(d, o, seed=d + 3 * o + rank)
    lam = np.linspace(0.05, 0.5, d)  # a diagonal (non-isotropic) ridge
    sol = solve_reduced_rank(G, C, rank, 2.0, ridge=lam, rr=rr, q_sum=qs, n=n)
    D = sol.delta()
    assert np.linalg.matrix_rank(D, tol=1e-8 * max(1.0, np.abs(D).max())) <= rank
    np.testing.assert_allclose(D, reduced_rank_eigh(G, C, lam, rank), rtol=1e-4, atol=1e-6)
    best = objective(G, C, rr, lam, D)
    assert best == pytest.approx(sol.optimum, rel=1e-6)
    assert best == pytest.approx(sol.objective * qs * o, rel=1e-9)
    rng = np.random.default_rng(0)
    # no nearby rank-r point (perturbed factors) and no random rank-r matrix does better
    A64, B64 = sol.A.astype(np.float64), sol.B.astype(np.float64)
    for eps in (1e-3, 1e-2, 1e-1):
        for _ in range(50):
            Dp = 2.0 * (B64 + eps * rng.standard_normal(B64.shape)) @ (A64 + eps * rng.standard_normal(A64.shape))
            assert objective(G, C, rr, lam, Dp) >= best - 1e-9 * abs(best)
    for _ in range(50):
        Dp = rng.standard_normal((o, rank)) @ rng.standard_normal((rank, d))
        assert objective(G, C, rr, lam, Dp) >= best
    # truncating the full ridge solution by plain SVD is a rank-r candidate that cannot do better
    U, S, Vt = np.linalg.svd(ridge_lstsq(X, R, q, lam), full_matrices=False)
    D_svd = (U[:, :rank] * S[:rank]) @ Vt[:rank]
    assert objective(G, C, rr, lam, D_svd) >= best - 1e-9 * abs(best)


def test_balanced_peft_factors():
    X, R, q, (G, C, rr, qs, n) = _fixture(12, 8, seed=5)
    scale = 32 / 4
    sol = solve_reduced_rank(G, C, 4, scale, ridge_rel=1e-3)
    assert sol.A.shape == (4, 12) and sol.B.shape == (8, 4)
    assert sol.A.dtype == np.float32 and sol.B.dtype == np.float32
    AAt = sol.A.astype(np.float64) @ sol.A.T
    BtB = sol.B.T.astype(np.float64) @ sol.B
    np.testing.assert_allclose(AAt, BtB, rtol=1e-5, atol=1e-6 * np.abs(AAt).max())
    np.testing.assert_allclose(np.diag(AAt), sol.singular_values / scale, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.svd(sol.delta(), compute_uv=False)[:4], sol.singular_values, rtol=1e-5)
    assert np.all(np.diff(sol.singular_values) <= 0)


def test_no_ridge_on_a_full_rank_gram_is_least_squares():
    X, R, q, (G, C, rr, qs, n) = _fixture(6, 4, seed=6)
    sol = solve_reduced_rank(G, C, 4, 1.0, rr=rr, q_sum=qs)
    np.testing.assert_allclose(sol.delta(), ridge_lstsq(X, R, q, 0.0), rtol=2e-5, atol=2e-6)
    assert sol.ridge_penalty == 0.0


def test_relative_ridge_uses_mean_diagonal():
    X, R, q, (G, C, rr, qs, n) = _fixture(6, 4, seed=7)
    a = solve_reduced_rank(G, C, 2, 1.0, ridge_rel=0.1)
    b = solve_reduced_rank(G, C, 2, 1.0, ridge=0.1 * np.mean(np.diag(G)))
    np.testing.assert_array_equal(a.lam, b.lam)
    np.testing.assert_allclose(a.delta(), b.delta(), rtol=1e-6)


def test_float16_data_solves_like_float32():
    X, R, q = problem(400, 10, 6, seed=8)
    s16 = ModuleStats(10, 6).update(X.astype(np.float16), R.astype(np.float16), q)
    X16, R16 = X.astype(np.float16).astype(np.float32), R.astype(np.float16).astype(np.float32)
    sol = s16.solve(3, 1.0, ridge_rel=1e-4)
    ref = reduced_rank_eigh(*stats(X16, R16, q)[:2], sol.lam, 3)
    np.testing.assert_allclose(sol.delta(), ref, rtol=1e-4, atol=1e-6)
    assert sol.train_loss == pytest.approx(weighted_loss(X16, R16, q, sol.delta()), rel=1e-8)


def test_shared_factor_equals_per_module_solve():
    X, R, q, (G, C, rr, qs, n) = _fixture(9, 6, seed=9)
    f = ridge_factor(G, ridge_rel=1e-2)
    a = solve_reduced_rank(G, C, 2, 1.0, factor=f)
    b = solve_reduced_rank(G, C, 2, 1.0, ridge_rel=1e-2)
    np.testing.assert_array_equal(a.A, b.A)
    with pytest.raises(ExactSolveError, match="either factor or ridge"):
        solve_reduced_rank(G, C, 2, 1.0, factor=f, ridge=1.0)


def test_losses_from_statistics_equal_the_data():
    X, R, q, (G, C, rr, qs, n) = _fixture(7, 5, seed=10)
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((2, 7)), rng.standard_normal((5, 2))
    D = 1.5 * B @ A
    ref = weighted_loss(X, R, q, D)
    assert loss_from_stats(G, C, rr, qs, D) == pytest.approx(ref, rel=1e-10)
    assert loss_from_factors(G, C, rr, qs, A, B, 1.5) == pytest.approx(ref, rel=1e-10)
    assert loss_from_stats(G, C, rr, qs, np.zeros((5, 7))) == pytest.approx(rr / (qs * 5), rel=1e-12)


def test_zero_targets_give_the_zero_adapter():
    X, _, q = problem(50, 5, 3, seed=11)
    G, C, rr, qs, n = stats(X, np.zeros((50, 3), np.float32), q)
    sol = solve_reduced_rank(G, C, 2, 1.0, ridge_rel=1e-3, rr=rr, q_sum=qs)
    assert np.all(np.isfinite(sol.A)) and not sol.delta().any()
    assert sol.train_loss == 0.0


# ---- bad input: one line naming the module and the reason

def _stats(d=6, o=4, n=60):
    X, R, q = problem(n, d, o, seed=12)
    return stats(X, R, q)


@pytest.mark.parametrize("rank", [0, 5, -1])
def test_rank_out_of_range(rank):
    G, C, *_ = _stats()
    with pytest.raises(ExactSolveError, match=r"^layers\.1\.v_proj: rank .* between 1 and min\(in, out\) = 4$"):
        solve_reduced_rank(G, C, rank, 1.0, ridge=1.0, name="layers.1.v_proj")


def test_singular_gram_without_ridge():
    X, R, q = problem(3, 6, 4, seed=13)  # 3 examples, 6 inputs
    G, C, rr, qs, n = stats(X, R, q)
    with pytest.raises(ExactSolveError, match=r"^down_proj: singular Gram .* set ridge or ridge_rel$"):
        solve_reduced_rank(G, C, 2, 1.0, name="down_proj")
    sol = solve_reduced_rank(G, C, 2, 1.0, ridge_rel=1e-3)  # a ridge makes it well posed
    assert np.all(np.isfinite(sol.A))


def test_too_few_examples_for_the_rank():
    X, R, q = problem(2, 6, 4, seed=14)
    s = ModuleStats(6, 4, name="layers.0.o_proj").update(X, R, q)
    with pytest.raises(ExactSolveError, match=r"^layers\.0\.o_proj: only 2 examples above the quality threshold, fewer than the rank 3$"):
        s.solve(3, 1.0, ridge=1.0)


def test_empty_after_filter():
    X, R, q = problem(20, 6, 4, seed=15)
    s = ModuleStats(6, 4, name="q_proj").update(X, R, np.zeros_like(q))
    assert s.n == 0
    with pytest.raises(ExactSolveError, match=r"^q_proj: no examples above the quality threshold \(n = 0\)$"):
        s.solve(1, 1.0, ridge=1.0)


@pytest.mark.parametrize("where", ["G", "C", "rr", "q_sum"])
def test_nan_in_statistics(where):
    G, C, rr, qs, n = _stats()
    G, C = G.copy(), C.copy()
    if where == "G":
        G[1, 1] = np.nan
    elif where == "C":
        C[0, 2] = np.inf
    elif where == "rr":
        rr = np.nan
    else:
        qs = np.nan
    with pytest.raises(ExactSolveError, match=r"^k_proj: NaN or infinity in the statistics"):
        solve_reduced_rank(G, C, 2, 1.0, ridge=1.0, rr=rr, q_sum=qs, name="k_proj")


def test_other_bad_values():
    G, C, *_ = _stats()
    with pytest.raises(ExactSolveError, match="scale must be finite and > 0"):
        solve_reduced_rank(G, C, 2, 0.0, ridge=1.0)
    with pytest.raises(ExactSolveError, match="ridge must be finite and >= 0"):
        solve_reduced_rank(G, C, 2, 1.0, ridge=-1.0)
    with pytest.raises(ExactSolveError, match="ridge must be a scalar or a vector of length 6"):
        solve_reduced_rank(G, C, 2, 1.0, ridge=np.ones(3))
    with pytest.raises(ExactSolveError, match="ridge_rel must be finite"):
        solve_reduced_rank(G, C, 2, 1.0, ridge_rel=np.nan)
    with pytest.raises(ExactSolveError, match="statistics shapes do not fit"):
        solve_reduced_rank(G[:5, :5], C, 2, 1.0, ridge=1.0)
    with pytest.raises(ExactSolveError, match="not symmetric"):
        solve_reduced_rank(G + np.triu(np.ones_like(G), 1), C, 2, 1.0, ridge=1.0)
    with pytest.raises(ExactSolveError, match="rank must be an integer"):
        solve_reduced_rank(G, C, 2.5, 1.0, ridge=1.0)


@pytest.mark.parametrize("d,o,rank", [(240, 240, 4), (240, 240, 20), (210, 260, 5), (260, 210, 1)])
def test_large_shapes_take_the_lanczos_route_and_agree(d, o, rank):
    X, R, q = problem(600, d, o, seed=d + o + rank, rank_true=6)
    G, C, rr, qs, n = stats(X, R, q)
    sol = solve_reduced_rank(G, C, rank, 1.0, ridge_rel=1e-2, rr=rr, q_sum=qs, n=n)
    ref = reduced_rank_eigh(G, C, sol.lam, rank)
    np.testing.assert_allclose(sol.delta(), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert objective(G, C, rr, sol.lam, sol.delta()) == pytest.approx(sol.optimum, rel=1e-6)


def test_rank_above_the_rank_of_the_data_returns_the_full_fit():
    """C of rank 1 and a request for rank 3: the optimum is the (rank-1) ridge fit itself."""
    rng = np.random.default_rng(20)
    X = rng.standard_normal((80, 5)).astype(np.float32)
    R = (X @ np.outer(rng.standard_normal(5), rng.standard_normal(9))).astype(np.float32)
    q = np.ones(80, np.float32)
    G, C, rr, qs, n = stats(X, R, q)
    sol = solve_reduced_rank(G, C, 3, 1.0, ridge=0.1, rr=rr, q_sum=qs)  # out 9 > in 5: the K K^T route
    np.testing.assert_allclose(sol.delta(), ridge_lstsq(X, R, q, 0.1), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(sol.A)) and np.all(np.isfinite(sol.B))
    assert sol.singular_values[1] < 1e-6 * sol.singular_values[0]


def test_validation_losses_of_every_truncation_and_rank_selection():
    rng = np.random.default_rng(30)
    W = rng.standard_normal((9, 2)) @ rng.standard_normal((2, 12)) / np.sqrt(12)  # a rank-2 truth

    def split(n):
        X = rng.standard_normal((n, 12)).astype(np.float32)
        return X, (X @ W.T + 1.0 * rng.standard_normal((n, 9))).astype(np.float32)

    (Xt, Rt), (Xv, Rv) = split(150), split(2000)
    tr = ModuleStats(12, 9).update(Xt, Rt, np.ones(150, np.float32))
    va = ModuleStats(12, 9).update(Xv, Rv, np.ones(2000, np.float32))
    sol = tr.solve(6, 2.0, ridge_rel=1e-3, val=va)
    assert sol.effective_rank == 6 and sol.val_losses.shape == (6,)
    for k in range(1, 7):
        ref = va.loss(tr.solve(k, 2.0, ridge_rel=1e-3).delta())
        assert sol.val_losses[k - 1] == pytest.approx(ref, rel=1e-6)
    best = tr.solve(6, 2.0, ridge_rel=1e-3, val=va, select_rank=True)
    k = best.effective_rank
    assert k == int(np.argmin(sol.val_losses)) + 1 and k < 6  # noise-only directions are dropped
    assert best.A.shape == (6, 12) and best.B.shape == (9, 6)
    assert not best.A[k:].any() and not best.B[:, k:].any()
    np.testing.assert_allclose(best.delta(), tr.solve(k, 2.0, ridge_rel=1e-3).delta(), rtol=1e-5, atol=1e-7)
    assert best.val_loss == pytest.approx(va.loss(best.delta()), rel=1e-6)
    assert best.val_loss <= sol.val_loss
    with pytest.raises(ExactSolveError, match="select_rank needs validation statistics"):
        tr.solve(3, 1.0, ridge=1.0, select_rank=True)


def test_error_type():
    err = ExactSolveError("layers.0.q_proj", "rank 3 must be between 1 and min(in, out) = 2")
    assert isinstance(err, ValueError) and str(err) == "layers.0.q_proj: rank 3 must be between 1 and min(in, out) = 2"
    assert (err.module, err.reason) == ("layers.0.q_proj", "rank 3 must be between 1 and min(in, out) = 2")
    assert str(ExactSolveError("whole message")) == "whole message"


@pytest.mark.parametrize("d,o", [(240, 240), (210, 300)])
def test_lanczos_route_with_fewer_directions_than_the_rank(d, o):
    """C of rank 2, rank 10 asked: zero eigenvalues in the top 10, still the exact optimum."""
    rng = np.random.default_rng(d + o)
    X = rng.standard_normal((500, d)).astype(np.float32)
    R = (X @ (rng.standard_normal((d, 2)) @ rng.standard_normal((2, o))) / d).astype(np.float32)
    q = np.ones(500, np.float32)
    G, C, rr, qs, n = stats(X, R, q)
    sol = solve_reduced_rank(G, C, 10, 1.0, ridge=1e-3, rr=rr, q_sum=qs)
    ref = ridge_lstsq(X, R, q, 1e-3)  # rank 2 already, so the rank-10 optimum is the full fit
    np.testing.assert_allclose(sol.delta(), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert np.all(np.isfinite(sol.A)) and np.all(np.isfinite(sol.B))
    assert objective(G, C, rr, sol.lam, sol.delta()) == pytest.approx(sol.optimum, rel=1e-6, abs=1e-9 * rr)
