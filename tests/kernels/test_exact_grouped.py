"""The grouped rank-r fit (v_proj through attention) against numpy references and brute force."""

import numpy as np
import pytest

from ruv_kernels.exact import ExactSolveError, solve_grouped_reduced_rank, solve_reduced_rank
from ruv_kernels.exact.grouped import _objective


def _groups(d, widths, seed, n=60, same_inputs=False):
    """Per group: rows Z_g [n, d], targets T_g [n, m_g] = Z_g D_g^T + noise; Gram and cross."""
    rng = np.random.default_rng(seed)
    Z0 = rng.normal(size=(n, d))
    grams, crosses, data = [], [], []
    for g, m in enumerate(widths):
        Z = Z0 if same_inputs else rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, size=d)
        T = Z @ rng.normal(size=(m, d)).T + 0.1 * rng.normal(size=(n, m))
        grams.append(Z.T @ Z)
        crosses.append(Z.T @ T)
        data.append((Z, T))
    return grams, crosses, data


def _ridged(grams, ridge_rel):
    d = grams[0].shape[0]
    return [G + ridge_rel * np.mean(np.diag(G)) * np.eye(d) for G in grams]


def _delta(sol, scale):
    return scale * sol.B.astype(np.float64) @ sol.A.astype(np.float64)


@pytest.mark.parametrize("d,widths,rank", [(7, (3,), 2), (5, (4,), 1), (9, (6,), 3)])
def test_one_group_is_reduced_rank_regression(d, widths, rank):
    grams, crosses, _ = _groups(d, widths, seed=d + rank)
    sol = solve_grouped_reduced_rank(grams, crosses, rank, 2.0, ridge_rel=0.1)
    ref = solve_reduced_rank(grams[0], crosses[0], rank, 2.0, ridge_rel=0.1)
    np.testing.assert_allclose(_delta(sol, 2.0), ref.delta(), rtol=1e-4, atol=1e-5)


def test_equal_grams_are_reduced_rank_of_the_stacked_targets():
    grams, crosses, _ = _groups(8, (3, 3, 2), seed=3, same_inputs=True)
    sol = solve_grouped_reduced_rank(grams, crosses, 2, 1.0, ridge_rel=0.05)
    ref = solve_reduced_rank(grams[0], np.concatenate(crosses, axis=1), 2, 1.0, ridge_rel=0.05)
    np.testing.assert_allclose(_delta(sol, 1.0), ref.delta(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_different_grams_never_worse_than_the_start_and_beat_random_rank_r(rank):
    grams, crosses, _ = _groups(10, (4, 4, 4), seed=rank)
    sol = solve_grouped_reduced_rank(grams, crosses, rank, 1.5, ridge_rel=0.1, iters=20)
    assert all(b <= a * (1 - 1e-12) + 1e-9 * abs(a) for a, b in zip(sol.objectives, sol.objectives[1:]))
    Hs = _ridged(grams, 0.1)
    D = _delta(sol, 1.5)
    splits = np.cumsum([0, 4, 4, 4])
    got = _objective(Hs, crosses, [D[splits[g]:splits[g + 1]] for g in range(3)], np.eye(10))
    assert got == pytest.approx(sol.objectives[-1], rel=1e-5)
    assert got >= sol.full_rank_objective - 1e-9 * abs(got)
    assert np.linalg.matrix_rank(D, tol=1e-6 * np.abs(D).max()) <= rank
    rng = np.random.default_rng(0)
    for _ in range(200):  # no rank-r matrix near the fit does better
        P = D + 0.05 * np.abs(D).max() * (rng.normal(size=(12, rank)) @ rng.normal(size=(rank, 10)))
        U, s, Vt = np.linalg.svd(P)
        P = (U[:, :rank] * s[:rank]) @ Vt[:rank]
        other = _objective(Hs, crosses, [P[splits[g]:splits[g + 1]] for g in range(3)], np.eye(10))
        assert other >= got - 1e-7 * abs(got)


def test_factors_are_balanced_and_full_rank_reaches_the_bound():
    grams, crosses, _ = _groups(5, (2, 3), seed=9)
    sol = solve_grouped_reduced_rank(grams, crosses, 5, 4.0, ridge_rel=0.2, iters=30)
    A, B = sol.A.astype(np.float64), sol.B.astype(np.float64)
    np.testing.assert_allclose(A @ A.T, B.T @ B, rtol=1e-4, atol=1e-6)
    assert sol.objectives[-1] == pytest.approx(sol.full_rank_objective, rel=1e-6)


@pytest.mark.parametrize("args,match", [
    (dict(rank=0), "rank 0 must be"),
    (dict(rank=6), "rank 6 must be"),
    (dict(ridge_rel=0.0), "ridge_rel must be"),
    (dict(nan=True), "group 1: NaN"),
    (dict(wrong=True), "group 1: statistics shapes"),
])
def test_bad_input_names_the_module_and_reason(args, match):
    grams, crosses, _ = _groups(4, (3, 2), seed=1)
    if args.get("nan"):
        crosses[1][0, 0] = np.nan
    if args.get("wrong"):
        grams[1] = np.eye(3)
    with pytest.raises(ExactSolveError, match=f"layers.3.v_proj.*{match}"):
        solve_grouped_reduced_rank(grams, crosses, args.get("rank", 2), 1.0, ridge_rel=args.get("ridge_rel", 0.1),
                                   name="layers.3.v_proj")
