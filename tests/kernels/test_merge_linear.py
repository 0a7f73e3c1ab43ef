"""Linear merges (average, weighted, task_arithmetic) against the dense weighted sum, and the
QR-based compression against a dense SVD."""

import numpy as np
import pytest

from ruv_kernels.merge import MergeError, MergeResult, merge
from ruv_kernels.merge.lowrank import compress_lowrank, lowrank_norm


def make_source(rng, shapes, ranks, scales=None, zero_b=False):
    src = {}
    for j, (key, (out_f, in_f)) in enumerate(shapes.items()):
        r = ranks[j] if isinstance(ranks, (list, tuple)) else ranks
        s = scales[j] if isinstance(scales, (list, tuple)) else (1.0 if scales is None else scales)
        a = rng.standard_normal((r, in_f)).astype(np.float32)
        b = np.zeros((out_f, r), np.float32) if zero_b else rng.standard_normal((out_f, r)).astype(np.float32)
        src[key] = (a, b, s)
    return src


def dense_delta(src, key, shape):
    if key not in src:
        return np.zeros(shape)
    a, b, s = src[key]
    return s * (b.astype(np.float64) @ a.astype(np.float64))


def dense_sum(sources, coeffs, key, shape):
    return sum(c * dense_delta(s, key, shape) for c, s in zip(coeffs, sources))


def merged_dense(res: MergeResult, key):
    a, b = res.modules[key]
    return b.astype(np.float64) @ a.astype(np.float64)


def rel(x, y):
    ny = np.linalg.norm(y)
    return np.linalg.norm(x - y) / (ny if ny > 0 else 1.0)


SHAPES = {"layers.0.q_proj": (13, 7), "layers.0.down_proj": (5, 19), "layers.1.v_proj": (1, 3)}


@pytest.fixture
def sources():
    rng = np.random.default_rng(0)
    s0 = make_source(rng, SHAPES, [3, 2, 1], scales=[2.0, 0.5, 1.5])
    s1 = make_source(rng, SHAPES, [1, 4, 2], scales=0.25)
    # the third source lacks a module: a zero delta for it
    s2 = make_source(rng, {k: v for k, v in SHAPES.items() if k != "layers.0.down_proj"}, [2, 1], scales=-1.0)
    return [s0, s1, s2]


@pytest.mark.parametrize(
    "method, kw, coeffs",
    [
        ("average", {}, [1 / 3, 1 / 3, 1 / 3]),
        ("weighted", {"weights": [1.0, 2.0, 5.0]}, [1 / 8, 2 / 8, 5 / 8]),
        ("weighted", {"weights": [3.0, -1.0, 2.0]}, [3 / 4, -1 / 4, 2 / 4]),
        ("task_arithmetic", {}, [1.0, 1.0, 1.0]),
        ("task_arithmetic", {"weights": [0.5, -1.0, 2.0], "lam": 0.7}, [0.35, -0.7, 1.4]),
    ],
)
def test_exact_linear_matches_dense_sum(sources, method, kw, coeffs):
    res = merge(method, sources, **kw)
    assert isinstance(res, MergeResult) and res.method == method
    assert res.reconstruction_error == 0.0
    # one rank for all modules: the largest summed source rank (3+1+2 for q_proj)
    assert res.rank == 6
    for key, shape in SHAPES.items():
        a, b = res.modules[key]
        assert a.shape == (res.rank, shape[1]) and b.shape == (shape[0], res.rank)
        assert a.dtype == np.float32 and b.dtype == np.float32
        assert rel(merged_dense(res, key), dense_sum(sources, coeffs, key, shape)) <= 1e-5
        assert res.per_module_error[key] == 0.0


def test_task_arithmetic_is_ilharco_sum_with_negation():
    """Ilharco et al.: theta = theta0 + lam * sum_i tau_i; a negative weight forgets a task."""
    rng = np.random.default_rng(1)
    shapes = {"m": (6, 4)}
    s0 = make_source(rng, shapes, 2)
    res = merge("task_arithmetic", [s0, s0], weights=[1.0, -1.0], lam=3.0)
    np.testing.assert_allclose(merged_dense(res, "m"), 0.0, atol=1e-6)
    res = merge("task_arithmetic", [s0], lam=-0.5)
    assert rel(merged_dense(res, "m"), -0.5 * dense_delta(s0, "m", (6, 4))) <= 1e-6


def test_rank_one_and_odd_shapes():
    rng = np.random.default_rng(2)
    shapes = {"x": (1, 1), "y": (17, 1), "z": (1, 23)}
    srcs = [make_source(rng, shapes, 1, scales=s) for s in (0.3, 7.0)]
    res = merge("weighted", srcs, weights=[0.2, 0.8])
    assert res.rank == 2
    for key, shape in shapes.items():
        assert rel(merged_dense(res, key), dense_sum(srcs, [0.2, 0.8], key, shape)) <= 1e-5
    res = merge("average", srcs, rank=1)
    assert res.rank == 1
    for key in shapes:
        assert res.modules[key][0].shape[0] == 1


def test_single_source_average_is_identity():
    rng = np.random.default_rng(3)
    s0 = make_source(rng, {"m": (9, 8)}, 3, scales=2.0)
    res = merge("average", [s0])
    assert res.rank == 3
    assert rel(merged_dense(res, "m"), dense_delta(s0, "m", (9, 8))) <= 1e-6


def test_requested_rank_larger_pads_with_zeros(sources):
    res = merge("average", sources, rank=10)
    assert res.rank == 10 and res.reconstruction_error == 0.0
    a, b = res.modules["layers.1.v_proj"]
    assert a.shape == (10, 3) and b.shape == (1, 10)
    # q_proj has summed rank 6: columns 6.. are padding
    a, b = res.modules["layers.0.q_proj"]
    assert not a[6:].any() and not b[:, 6:].any()


def test_compression_equals_dense_truncated_svd():
    rng = np.random.default_rng(4)
    shapes = {"m": (40, 30), "n": (25, 50)}
    srcs = [make_source(rng, shapes, 4, scales=s) for s in (1.0, 0.5, 2.0)]
    k = 5
    res = merge("task_arithmetic", srcs, weights=[1.0, -0.5, 0.25], rank=k)
    assert res.rank == k
    num = den = 0.0
    for key, shape in shapes.items():
        d = dense_sum(srcs, [1.0, -0.5, 0.25], key, shape)
        u, s, vt = np.linalg.svd(d)
        dk = (u[:, :k] * s[:k]) @ vt[:k]
        got = merged_dense(res, key)
        assert rel(got, dk) <= 1e-5
        err = np.linalg.norm(d - dk)
        assert res.per_module_error[key] == pytest.approx(err / np.linalg.norm(d), rel=1e-6)
        num += err**2
        den += np.linalg.norm(d) ** 2
    assert res.reconstruction_error == pytest.approx(np.sqrt(num / den), rel=1e-6)
    assert sorted(res.params["compressed_modules"]) == ["m", "n"]
    # singular values are split evenly: both factors carry sqrt(s)
    a, b = res.modules["m"]
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0), rtol=1e-4)


def test_compression_beyond_the_shape_is_exact():
    """Summed rank above min(out, in): the QR route still returns the exact delta."""
    rng = np.random.default_rng(5)
    shapes = {"m": (6, 30)}
    srcs = [make_source(rng, shapes, 4) for _ in range(3)]
    res = merge("average", srcs, rank=7)
    assert res.reconstruction_error < 1e-6
    assert rel(merged_dense(res, "m"), dense_sum(srcs, [1 / 3] * 3, "m", (6, 30))) <= 1e-5


def test_compress_lowrank_never_needs_the_dense_delta():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((8, 200)).astype(np.float32)
    b = rng.standard_normal((300, 8)).astype(np.float32)
    a_k, b_k, resid, full = compress_lowrank(a, b, 3)
    d = b.astype(np.float64) @ a
    s = np.linalg.svd(d, compute_uv=False)
    assert full == pytest.approx(np.linalg.norm(d), rel=1e-6)
    assert resid == pytest.approx(np.sqrt(np.sum(s[3:] ** 2)), rel=1e-5)
    assert lowrank_norm(a, b) == pytest.approx(np.linalg.norm(d), rel=1e-6)


@pytest.mark.parametrize("method, kw", [("average", {}), ("weighted", {"weights": [1, 1]}),
                                        ("task_arithmetic", {"lam": 2.0}), ("slerp", {"t": 0.5})])
def test_all_zero_inputs_give_zero(method, kw):
    rng = np.random.default_rng(7)
    srcs = [make_source(rng, {"m": (5, 4)}, 2, zero_b=True) for _ in range(2)]
    res = merge(method, srcs, **kw)
    a, b = res.modules["m"]
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert not (b @ a).any()
    assert res.reconstruction_error == 0.0 and res.per_module_error["m"] == 0.0
    res = merge(method, srcs, rank=1, **kw)
    assert not (res.modules["m"][1] @ res.modules["m"][0]).any()
    assert res.reconstruction_error == 0.0


def test_zero_weight_source_is_left_out():
    rng = np.random.default_rng(8)
    srcs = [make_source(rng, {"m": (5, 4)}, 2) for _ in range(2)]
    res = merge("task_arithmetic", srcs, weights=[1.0, 0.0])
    assert res.rank == 2


def test_inputs_are_not_modified(sources):
    before = [{k: (a.copy(), b.copy(), s) for k, (a, b, s) in src.items()} for src in sources]
    merge("task_arithmetic", sources, weights=[1, 2, 3], rank=2)
    for src, old in zip(sources, before):
        for k in src:
            np.testing.assert_array_equal(src[k][0], old[k][0])
            np.testing.assert_array_equal(src[k][1], old[k][1])


def test_float64_factors_are_accepted():
    rng = np.random.default_rng(9)
    a = rng.standard_normal((2, 5))
    b = rng.standard_normal((3, 2))
    res = merge("average", [{"m": (a, b, 1.0)}])
    assert res.modules["m"][0].dtype == np.float32
    assert rel(merged_dense(res, "m"), b @ a) <= 1e-6


def test_merge_error_is_value_error():
    assert issubclass(MergeError, ValueError)
