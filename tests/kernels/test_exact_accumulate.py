"""Streaming statistics against plain numpy: G, C, rr, q_sum, n; float16/32/64; shared Grams."""

import numpy as np
import pytest

from ruv_kernels.exact import (ExactSolveError, LayerStats, ModuleStats, accumulate_cross, accumulate_gram,
                           stream_stats)
from tests.kernels.exact_reference import problem, stats


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("chunk_rows", [1, 7, None])
def test_gram_and_cross_match_numpy(dtype, chunk_rows):
    X, R, q = problem(203, 13, 5, seed=1, zero_every=4)
    X, R = X.astype(dtype), R.astype(dtype)
    G_ref, C_ref, rr_ref, qs_ref, n_ref = stats(X, R, q)
    G = np.zeros((13, 13))
    used, qs = accumulate_gram(G, X, q, chunk_rows=chunk_rows, precision="float64")
    C = np.zeros((13, 5))
    rr = accumulate_cross(C, X, R, q, chunk_rows=chunk_rows, precision="float64")
    assert used == n_ref and qs == pytest.approx(qs_ref, rel=1e-12)
    np.testing.assert_allclose(G, G_ref, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(G, G.T)
    np.testing.assert_allclose(C, C_ref, rtol=1e-12, atol=1e-10)
    assert rr == pytest.approx(rr_ref, rel=1e-12)


def test_accumulates_in_place_onto_existing_values():
    X, R, q = problem(50, 6, 3, seed=2)
    G_ref, C_ref, *_ = stats(X, R, q)
    G = np.eye(6)
    C = np.ones((6, 3))
    accumulate_gram(G, X, q)
    accumulate_cross(C, X, R, q)
    np.testing.assert_allclose(G, G_ref + np.eye(6), rtol=1e-12)
    np.testing.assert_allclose(C, C_ref + 1.0, rtol=1e-12)


def test_mixed_precision_is_close_to_float64():
    X, R, q = problem(3000, 40, 9, seed=3)
    G_ref, C_ref, *_ = stats(X, R, q)
    G = np.zeros((40, 40))
    C = np.zeros((40, 9))
    stream_stats(G, X, q, [(C, R)], precision="mixed", chunk_rows=256)
    np.testing.assert_array_equal(G, G.T)
    assert np.max(np.abs(G - G_ref)) / np.max(np.abs(G_ref)) < 1e-6
    assert np.max(np.abs(C - C_ref)) / np.max(np.abs(C_ref)) < 1e-6


@pytest.mark.parametrize("dtype, same_as", [(np.float32, "mixed"), (np.float16, "mixed"), (np.float64, "float64")])
def test_auto_precision_follows_the_data(dtype, same_as):
    """The default computes as BLAS would on the data: float32 products for float16/32 storage
    (summed in float64 across chunks), float64 products for float64 storage."""
    X, R, q = problem(700, 24, 6, seed=6)
    X, R = X.astype(dtype), R.astype(dtype)
    results = {}
    for precision in ("auto", same_as, "float64" if same_as == "mixed" else "mixed"):
        G, C = np.zeros((24, 24)), np.zeros((24, 6))
        stream_stats(G, X, q, [(C, R)], precision=precision)
        results[precision] = (G, C)
    np.testing.assert_array_equal(results["auto"][0], results[same_as][0])
    np.testing.assert_array_equal(results["auto"][1], results[same_as][1])
    other = "float64" if same_as == "mixed" else "mixed"
    assert not np.array_equal(results["auto"][0], results[other][0])
    # a float64 target makes the cross product float64 as well
    G, C = np.zeros((24, 24)), np.zeros((24, 6))
    G64, C64 = np.zeros((24, 24)), np.zeros((24, 6))
    stream_stats(G, X.astype(np.float32), q, [(C, R.astype(np.float64))], precision="auto")
    stream_stats(G64, X.astype(np.float32), q, [(C64, R.astype(np.float64))], precision="float64")
    np.testing.assert_array_equal(C, C64)


def test_rank_one_rows_and_single_column():
    X, R, q = problem(1, 1, 1, seed=4)
    G = np.zeros((1, 1))
    assert accumulate_gram(G, X, q) == (1, pytest.approx(float(q[0])))
    assert G[0, 0] == pytest.approx(float(q[0]) * float(X[0, 0]) ** 2, rel=1e-12)


def test_all_weights_zero_adds_nothing():
    X, R, q = problem(40, 5, 3, seed=5)
    q[:] = 0
    G = np.zeros((5, 5))
    C = np.zeros((5, 3))
    assert accumulate_gram(G, X, q) == (0, 0.0)
    assert accumulate_cross(C, X, R, q) == 0.0
    assert not G.any() and not C.any()


def test_empty_input_adds_nothing():
    G = np.zeros((4, 4))
    assert accumulate_gram(G, np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) == (0, 0.0)
    assert not G.any()


@pytest.mark.parametrize("bad", ["negative", "nan", "shape"])
def test_bad_weights_raise_and_change_nothing(bad):
    X, R, q = problem(20, 4, 2, seed=6)
    if bad == "negative":
        q[3] = -1
    elif bad == "nan":
        q[3] = np.nan
    else:
        q = q[:-1]
    G = np.zeros((4, 4))
    with pytest.raises(ExactSolveError, match=r"^layers\.0\.q_proj: .*weights"):
        accumulate_gram(G, X, q, name="layers.0.q_proj")
    assert not G.any()


def test_bad_arrays_raise():
    X, R, q = problem(20, 4, 2, seed=7)
    with pytest.raises(ExactSolveError, match="float64"):
        accumulate_gram(np.zeros((4, 4), np.float32), X, q)
    with pytest.raises(ExactSolveError, match="shape"):
        accumulate_cross(np.zeros((4, 3)), X, R, q)
    with pytest.raises(ExactSolveError, match="rows"):
        accumulate_cross(np.zeros((4, 2)), X, R[:-1], q)
    with pytest.raises(ExactSolveError, match="float16, float32 or float64"):
        accumulate_gram(np.zeros((4, 4)), X.astype(np.int32), q)


def test_module_stats_update_and_merge_equal_one_pass():
    X, R, q = problem(300, 11, 6, seed=8, zero_every=3)
    G_ref, C_ref, rr_ref, qs_ref, n_ref = stats(X, R, q)
    whole = ModuleStats(11, 6).update(X, R, q)
    a = ModuleStats(11, 6).update(X[:120], R[:120], q[:120])
    b = ModuleStats(11, 6).update(X[120:], R[120:], q[120:])
    a.merge(b)
    for s in (whole, a):
        np.testing.assert_allclose(s.G, G_ref, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(s.C, C_ref, rtol=1e-12, atol=1e-10)
        assert s.rr == pytest.approx(rr_ref, rel=1e-12)
        assert s.q_sum == pytest.approx(qs_ref, rel=1e-12)
        assert s.n == n_ref
    back = ModuleStats.from_arrays(whole.to_arrays())
    np.testing.assert_array_equal(back.G, whole.G)
    assert (back.rr, back.q_sum, back.n) == (whole.rr, whole.q_sum, whole.n)


def test_layer_stats_share_one_gram():
    X, Rq, q = problem(150, 9, 4, seed=9)
    _, Rk, _ = problem(150, 9, 2, seed=10)
    layer = LayerStats(9, {"q_proj": 4, "k_proj": 2}).update(X, {"q_proj": Rq, "k_proj": Rk}, q)
    G_ref, Cq, rrq, qs, n = stats(X, Rq, q)
    _, Ck, rrk, _, _ = stats(X, Rk, q)
    vq, vk = layer.module("q_proj"), layer.module("k_proj")
    assert vq.G is layer.G and vk.G is layer.G  # one Gram, no copy
    np.testing.assert_allclose(layer.G, G_ref, rtol=1e-12)
    np.testing.assert_allclose(vq.C, Cq, rtol=1e-12)
    np.testing.assert_allclose(vk.C, Ck, rtol=1e-12)
    assert (vq.rr, vk.rr) == (pytest.approx(rrq, rel=1e-12), pytest.approx(rrk, rel=1e-12))
    assert vq.n == n and vq.q_sum == pytest.approx(qs)
    with pytest.raises(ExactSolveError, match="shares its layer's Gram"):
        vq.update(X, Rq, q)
    with pytest.raises(ExactSolveError, match="exactly"):
        layer.update(X, {"q_proj": Rq}, q)
    assert layer.nbytes == 8 * (81 + 9 * 6)


def test_nan_in_an_excluded_row_does_not_poison_the_statistics():
    X, R, q = problem(30, 5, 3, seed=11)
    X[4, 2] = np.nan
    R[7, 1] = np.inf
    q[4] = q[7] = 0.0
    s = ModuleStats(5, 3).update(X, R, q)
    assert np.all(np.isfinite(s.G)) and np.all(np.isfinite(s.C)) and np.isfinite(s.rr)
    assert s.n == 28


@pytest.mark.parametrize("where", ["X", "R"])
def test_nan_in_a_used_row_is_reported_at_the_solve(where):
    X, R, q = problem(30, 5, 3, seed=12)
    (X if where == "X" else R)[4, 1] = np.nan
    s = ModuleStats(5, 3, name="layers.1.k_proj").update(X.astype(np.float16), R.astype(np.float16), q)
    with pytest.raises(ExactSolveError, match=r"^layers\.1\.k_proj: NaN or infinity in the statistics"):
        s.solve(2, 1.0, ridge_rel=1e-3)


def test_strided_views_are_read_in_place():
    X, R, q = problem(60, 10, 6, seed=13)
    X16 = X.astype(np.float16)
    for Xv in (X[:, 1:8], np.asfortranarray(X)[:, 1:8], X16[:, 1:8]):
        G_ref, C_ref, *_ = stats(np.ascontiguousarray(Xv), np.ascontiguousarray(R[:, ::2]), q)
        G, C = np.zeros((7, 7)), np.zeros((7, 3))
        stream_stats(G, Xv, q, [(C, R[:, ::2])])
        np.testing.assert_allclose(G, G_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(C, C_ref, rtol=1e-12, atol=1e-12)
