"""prune_merged: top-density fraction by magnitude of the weighted sum, per module (named
`magnitude_prune` before that name became PEFT's method: prune each task, then sum)."""

import numpy as np
import pytest

from ruv_kernels.merge import merge
from ruv_kernels.merge.sparsify import prune_inplace


def prune_ref(d, density):
    flat = d.ravel().copy()
    k = int(density * flat.size)
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
    return np.where(keep, flat, 0.0).reshape(d.shape)


def _src(rng, shapes, r, scale=1.0):
    return {k: (rng.standard_normal((r, i)).astype(np.float32),
                rng.standard_normal((o, r)).astype(np.float32), scale) for k, (o, i) in shapes.items()}


@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_matches_reference(density):
    rng = np.random.default_rng(0)
    shapes = {"q": (9, 7), "down": (5, 12)}
    srcs = [_src(rng, shapes, 3, 0.5), _src(rng, {"q": (9, 7)}, 4, 2.0)]
    w = [1.0, -0.5]
    res = merge("prune_merged", srcs, density=density, weights=w, lam=1.2)
    assert res.reconstruction_error == pytest.approx(0.0, abs=1e-6)
    for key, shape in shapes.items():
        d = sum(1.2 * w[j] * s[key][2] * (s[key][1].astype(np.float64) @ s[key][0])
                for j, s in enumerate(srcs) if key in s)
        a, b = res.modules[key]
        np.testing.assert_allclose(b.astype(np.float64) @ a, prune_ref(d, density), rtol=1e-4, atol=1e-5)


def test_prune_inplace_counts():
    x = np.random.default_rng(1).standard_normal((30, 20)).astype(np.float32)
    y = x.copy()
    prune_inplace(y, 0.25)
    assert np.count_nonzero(y) == 150
    np.testing.assert_array_equal(y, prune_ref(x, 0.25))


def test_truncated_and_zero():
    rng = np.random.default_rng(2)
    srcs = [_src(rng, {"m": (20, 16)}, 4) for _ in range(2)]
    res = merge("prune_merged", srcs, density=0.5, rank=2)
    assert res.rank == 2 and 0.0 < res.reconstruction_error < 1.0
    zero = [{"m": (np.ones((2, 3), np.float32), np.zeros((4, 2), np.float32), 1.0)}]
    res = merge("prune_merged", zero, density=0.5)
    a, b = res.modules["m"]
    assert np.isfinite(a).all() and not (b @ a).any() and res.reconstruction_error == 0.0
