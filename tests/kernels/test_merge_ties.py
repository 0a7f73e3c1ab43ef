"""TIES against a plain numpy implementation of Yadav et al. 2023 (trim per task vector, elect
sign by summed mass, disjoint mean), through `ties_dense` and through `merge`."""

import numpy as np
import pytest

from ruv_kernels.merge import merge
from ruv_kernels.merge.ties import ties_dense


def ties_ref(deltas, density, weights=None, lam=1.0):
    """Yadav et al. 2023, Algorithm 1, with PEFT's conventions (k = int(density * n) per task,
    zero summed mass elects +, weights scale what is averaged)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    t = deltas.shape[0]
    flat = deltas.reshape(t, -1)
    w = np.ones(t) if weights is None else np.asarray(weights, dtype=np.float64)
    trimmed = np.zeros_like(flat)
    for i in range(t):
        k = int(density * flat.shape[1])
        top = np.argsort(-np.abs(flat[i]), kind="stable")[:k]  # full sort: fine for a reference
        trimmed[i, top] = flat[i, top]
    gamma = np.where(trimmed.sum(axis=0) >= 0, 1.0, -1.0)
    agree = (np.sign(trimmed) == gamma) & (trimmed != 0)
    num = (w[:, None] * trimmed * agree).sum(axis=0)
    cnt = agree.sum(axis=0)
    return (lam * num / np.maximum(cnt, 1)).reshape(deltas.shape[1:])


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("shape", [(3, 16, 12), (2, 1, 7), (5, 9, 13), (1, 6, 6)])
def test_ties_dense_matches_reference(density, shape):
    rng = np.random.default_rng(0)
    d = rng.standard_normal(shape).astype(np.float32)
    got = ties_dense(d, density)
    np.testing.assert_allclose(got, ties_ref(d, density), rtol=1e-6, atol=1e-6)


def test_ties_weights_and_lambda():
    rng = np.random.default_rng(1)
    d = rng.standard_normal((4, 20, 10)).astype(np.float32)
    w = [0.5, 2.0, 1.0, 0.1]
    got = ties_dense(d, 0.3, weights=w, lam=1.7)
    np.testing.assert_allclose(got, ties_ref(d, 0.3, w, 1.7), rtol=1e-5, atol=1e-6)


def test_trim_is_per_task_vector_not_per_coordinate():
    """A task with small entries keeps its own top entries (the seed trimmed across tasks)."""
    big = np.array([[10.0, 9.0, 8.0, 7.0]], np.float32)
    small = np.array([[0.0, 0.0, 0.2, 0.1]], np.float32)
    d = np.stack([big, small])
    got = ties_dense(d, 0.5)
    # big keeps 10, 9; small keeps 0.2, 0.1 -> disjoint mean per coordinate
    np.testing.assert_allclose(got, [[10.0, 9.0, 0.2, 0.1]])


def test_sign_election_by_mass_and_disjoint_mean():
    d = np.array([[[3.0, -1.0, 1.0]], [[-1.0, -1.0, -1.0]], [[-1.0, 2.0, 0.0]]], np.float32)
    got = ties_dense(d, 1.0)
    # col 0: mass +1 -> only 3.0 agrees; col 1: mass 0 -> + elected -> 2.0; col 2: mass 0 -> + -> 1.0
    np.testing.assert_allclose(got, [[3.0, 2.0, 1.0]])
    np.testing.assert_allclose(got, ties_ref(d, 1.0))


def test_all_zero_gives_zero_not_nan():
    d = np.zeros((3, 8, 5), np.float32)
    for density in (0.1, 0.5, 1.0):
        got = ties_dense(d, density)
        assert np.isfinite(got).all() and not got.any()


def test_density_too_small_to_keep_anything():
    d = np.random.default_rng(2).standard_normal((2, 3, 3)).astype(np.float32)
    got = ties_dense(d, 0.1)  # int(0.1 * 9) = 0 entries kept per task
    assert not got.any()


def test_ties_inputs_not_modified_and_out_reused():
    d = np.random.default_rng(3).standard_normal((3, 10, 10)).astype(np.float32)
    keep = d.copy()
    out = np.full((10, 10), np.nan, np.float32)
    res = ties_dense(d, 0.4, out=out)
    assert res is out
    np.testing.assert_array_equal(d, keep)
    np.testing.assert_allclose(out, ties_ref(d, 0.4), rtol=1e-6, atol=1e-6)


def _src(rng, shapes, r, scale=1.0):
    return {k: (rng.standard_normal((r, i)).astype(np.float32),
                rng.standard_normal((o, r)).astype(np.float32), scale) for k, (o, i) in shapes.items()}


def _delta(s, key, shape):
    if key not in s:
        return np.zeros(shape, np.float32)
    a, b, sc = s[key]
    return (np.float32(sc) * b) @ a


def test_merge_ties_exact_when_rank_covers_the_shape():
    rng = np.random.default_rng(4)
    shapes = {"q": (6, 5), "down": (4, 7)}
    srcs = [_src(rng, shapes, 3, 0.5), _src(rng, shapes, 2, 2.0),
            _src(rng, {"q": (6, 5)}, 4, 1.0)]  # third lacks "down"
    res = merge("ties", srcs, density=0.4, weights=[1.0, 0.5, 2.0], lam=0.9)
    assert res.rank == 5  # summed ranks capped by min(out, in): q -> 5, down -> 4
    assert res.reconstruction_error == pytest.approx(0.0, abs=1e-6)
    for key, shape in shapes.items():
        idx = [i for i, s in enumerate(srcs) if key in s]
        d = np.stack([_delta(srcs[i], key, shape) for i in idx])
        ref = ties_ref(d, 0.4, [[1.0, 0.5, 2.0][i] for i in idx], 0.9)
        a, b = res.modules[key]
        np.testing.assert_allclose(b.astype(np.float64) @ a, ref, rtol=1e-4, atol=1e-5)


def test_merge_ties_truncated_reports_svd_error():
    rng = np.random.default_rng(5)
    shapes = {"m": (24, 18)}
    srcs = [_src(rng, shapes, 4) for _ in range(3)]
    res = merge("ties", srcs, density=0.3, rank=4)
    ref = ties_ref(np.stack([_delta(s, "m", (24, 18)) for s in srcs]), 0.3)
    u, s, vt = np.linalg.svd(ref)
    a, b = res.modules["m"]
    np.testing.assert_allclose(b.astype(np.float64) @ a, (u[:, :4] * s[:4]) @ vt[:4], atol=1e-4)
    expected = np.sqrt(np.sum(s[4:] ** 2) / np.sum(s**2))
    assert res.reconstruction_error == pytest.approx(expected, rel=1e-4)
    assert res.per_module_error["m"] == pytest.approx(expected, rel=1e-4)


def test_merge_ties_all_zero_sources():
    srcs = [{"m": (np.ones((2, 4), np.float32), np.zeros((3, 2), np.float32), 1.0)} for _ in range(3)]
    res = merge("ties", srcs, density=0.5)
    a, b = res.modules["m"]
    assert np.isfinite(a).all() and np.isfinite(b).all() and not (b @ a).any()
    assert res.reconstruction_error == 0.0
