"""The two ways a merged module becomes factors again: `truncate_dense` (dense paths) against
numpy's SVD, on tall, wide, rank-deficient and zero deltas."""

import numpy as np
import pytest

from ruv_kernels.merge.lowrank import truncate_dense


def best_rank_k(d, k):
    u, s, vt = np.linalg.svd(d.astype(np.float64), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], np.sqrt(np.sum(s[k:] ** 2))


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (33, 33), (1, 9), (9, 1)])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_truncate_dense_is_the_best_rank_k(shape, k):
    d = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    a, b, resid, full = truncate_dense(d, k)
    kk = min(k, *shape)
    assert a.shape[1] == shape[1] and b.shape[0] == shape[0] and a.shape[0] == b.shape[1] <= kk
    ref, ref_resid = best_rank_k(d, kk)
    got = b.astype(np.float64) @ a.astype(np.float64)
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(d).max())
    assert full == pytest.approx(np.linalg.norm(d.astype(np.float64)), rel=1e-9)
    assert resid == pytest.approx(ref_resid, rel=1e-5, abs=1e-6 * full)
    assert resid == pytest.approx(np.linalg.norm(d - got), rel=1e-4, abs=1e-5 * full)


def test_truncate_dense_rank_deficient_and_balanced():
    rng = np.random.default_rng(1)
    d = (rng.standard_normal((50, 2)) @ rng.standard_normal((2, 30))).astype(np.float32)
    a, b, resid, full = truncate_dense(d, 5)  # asks for more than the rank
    assert np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(b @ a, d, atol=1e-4)
    assert resid <= 1e-5 * full
    a, b, _, _ = truncate_dense(d, 2)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0), rtol=1e-4)


def test_truncate_dense_zero_and_full_rank():
    a, b, resid, full = truncate_dense(np.zeros((4, 6), np.float32), 2)
    assert a.shape == (0, 6) and b.shape == (4, 0) and resid == 0.0 and full == 0.0
    d = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    a, b, resid, full = truncate_dense(d, 4)
    np.testing.assert_array_equal(b @ a, d)
    assert resid == 0.0
