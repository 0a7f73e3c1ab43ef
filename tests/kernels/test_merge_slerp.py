"""SLERP per module against a dense numpy reference (mergekit's formula)."""

import math

import numpy as np
import pytest

from ruv_kernels.merge import merge
from ruv_kernels.merge.slerp import DOT_THRESHOLD, slerp_coefficients


def slerp_ref(t, v0, v1, dot_threshold=DOT_THRESHOLD, eps=1e-12):
    """mergekit's slerp on flat vectors: angle from the normalised copies, applied to the raw."""
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    if n0 < eps or n1 < eps:
        return (1 - t) * v0 + t * v1
    dot = float(np.sum((v0 / n0) * (v1 / n1)))
    if abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta0 = math.acos(dot)
    s0 = math.sin(theta0 - theta0 * t) / math.sin(theta0)
    s1 = math.sin(theta0 * t) / math.sin(theta0)
    return s0 * v0 + s1 * v1


def src(rng, shapes, r, scale=1.0):
    return {k: (rng.standard_normal((r, i)).astype(np.float32),
                rng.standard_normal((o, r)).astype(np.float32), scale) for k, (o, i) in shapes.items()}


def delta(s, key, shape):
    if key not in s:
        return np.zeros(shape)
    a, b, sc = s[key]
    return sc * (b.astype(np.float64) @ a)


def dense(res, key):
    a, b = res.modules[key]
    return b.astype(np.float64) @ a


def rel(x, y):
    return np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_reference(t):
    rng = np.random.default_rng(0)
    shapes = {"a": (11, 7), "b": (4, 9)}
    s0, s1 = src(rng, shapes, 3, 2.0), src(rng, shapes, 2, 0.5)
    res = merge("slerp", [s0, s1], t=t)
    # a zero coefficient drops that source's factors: endpoints return one adapter's rank
    assert res.rank == {0.0: 3, 1.0: 2}.get(t, 5) and res.reconstruction_error == 0.0
    for key, shape in shapes.items():
        ref = slerp_ref(t, delta(s0, key, shape), delta(s1, key, shape))
        assert rel(dense(res, key), ref) <= 1e-5
    assert res.params["linear_fallback_modules"] == []


def test_slerp_is_not_linear_interpolation():
    rng = np.random.default_rng(1)
    shapes = {"a": (20, 20)}
    s0, s1 = src(rng, shapes, 4), src(rng, shapes, 4)
    d0, d1 = delta(s0, "a", (20, 20)), delta(s1, "a", (20, 20))
    got = dense(merge("slerp", [s0, s1], t=0.5), "a")
    assert rel(got, 0.5 * d0 + 0.5 * d1) > 0.1
    # on the arc: for near-orthogonal deltas of equal norm the midpoint keeps the norm
    assert np.linalg.norm(got) == pytest.approx(
        np.linalg.norm(slerp_ref(0.5, d0, d1)), rel=1e-5)


def test_parallel_and_antiparallel_fall_back_to_linear():
    rng = np.random.default_rng(2)
    s0 = src(rng, {"a": (6, 5)}, 2)
    a, b, _ = s0["a"]
    for sc in (3.0, -2.0):
        s1 = {"a": (a.copy(), b.copy(), sc)}
        res = merge("slerp", [s0, s1], t=0.3)
        assert res.params["linear_fallback_modules"] == ["a"]
        d0 = delta(s0, "a", (6, 5))
        assert rel(dense(res, "a"), 0.7 * d0 + 0.3 * sc * d0) <= 1e-5
        assert np.isfinite(dense(res, "a")).all()


def test_missing_module_is_a_zero_delta():
    rng = np.random.default_rng(3)
    s0 = src(rng, {"a": (6, 5), "b": (3, 3)}, 2)
    s1 = src(rng, {"a": (6, 5)}, 3)
    res = merge("slerp", [s0, s1], t=0.4)
    assert rel(dense(res, "b"), 0.6 * delta(s0, "b", (3, 3))) <= 1e-6
    assert "b" in res.params["linear_fallback_modules"]


def test_slerp_compressed_rank():
    rng = np.random.default_rng(4)
    shapes = {"a": (30, 20)}
    s0, s1 = src(rng, shapes, 4), src(rng, shapes, 4)
    ref = slerp_ref(0.3, delta(s0, "a", (30, 20)), delta(s1, "a", (30, 20)))
    res = merge("slerp", [s0, s1], t=0.3, rank=3)
    u, s, vt = np.linalg.svd(ref)
    assert rel(dense(res, "a"), (u[:, :3] * s[:3]) @ vt[:3]) <= 1e-5
    assert res.reconstruction_error == pytest.approx(np.sqrt(np.sum(s[3:] ** 2) / np.sum(s**2)), rel=1e-5)


def test_coefficients_endpoints():
    assert slerp_coefficients(0.0, 0.1, 1.0, 1.0)[:2] == pytest.approx((1.0, 0.0))
    assert slerp_coefficients(1.0, 0.1, 1.0, 1.0)[:2] == pytest.approx((0.0, 1.0))
    assert slerp_coefficients(0.5, 0.0, 0.0, 1.0) == (0.5, 0.5, True)
