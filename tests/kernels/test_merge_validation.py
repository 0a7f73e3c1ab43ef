"""Every mistake a user can make raises MergeError naming the parameter."""

import numpy as np
import pytest

from ruv_kernels.merge import (
    METHOD_PARAMS,
    METHODS,
    PARAM_DEFAULTS,
    REQUIRED_PARAMS,
    MergeError,
    merge,
)


def src(r=2, out_f=4, in_f=3, scale=1.0):
    rng = np.random.default_rng(r * 100 + out_f)
    return {"m": (rng.standard_normal((r, in_f)).astype(np.float32),
                  rng.standard_normal((out_f, r)).astype(np.float32), scale)}


TWO = [src(2), src(3)]


def test_registry_is_complete():
    assert set(METHODS) == {"average", "weighted", "task_arithmetic", "slerp", "ties", "dare",
                            "magnitude_prune", "prune_merged"}
    for name in METHODS:
        assert "rank" in METHOD_PARAMS[name]
        assert set(REQUIRED_PARAMS[name]) <= set(METHOD_PARAMS[name]) <= set(PARAM_DEFAULTS)


@pytest.mark.parametrize("method", ["ties", "dare", "magnitude_prune", "prune_merged"])
@pytest.mark.parametrize("density", [0, 0.0, -0.1, 1.0001, 2, float("nan"), "abc"])
def test_bad_density(method, density):
    with pytest.raises(MergeError, match="density"):
        merge(method, TWO, density=density)


@pytest.mark.parametrize("method", ["ties", "dare", "magnitude_prune"])
def test_missing_density(method):
    with pytest.raises(MergeError, match="density.*requires|requires density"):
        merge(method, TWO)


@pytest.mark.parametrize("t", [-0.01, 1.01, float("nan"), None])
def test_bad_t(t):
    with pytest.raises(MergeError, match="t"):
        merge("slerp", TWO, t=t)


@pytest.mark.parametrize("n", [1, 3])
def test_slerp_needs_exactly_two(n):
    with pytest.raises(MergeError, match="exactly 2"):
        merge("slerp", [src(2)] * n, t=0.5)


@pytest.mark.parametrize("method, kw", [("weighted", {}), ("task_arithmetic", {}), ("ties", {"density": 0.5}),
                                        ("dare", {"density": 0.5}), ("magnitude_prune", {"density": 0.5})])
@pytest.mark.parametrize("weights", [[1.0], [1.0, 2.0, 3.0], [], [1.0, float("inf")]])
def test_weights_wrong_length_or_not_finite(method, kw, weights):
    with pytest.raises(MergeError, match="weights"):
        merge(method, TWO, weights=weights, **kw)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [0.5, 0.25, -0.75]])
def test_weighted_sum_zero(weights):
    srcs = [src(2)] * len(weights)
    with pytest.raises(MergeError, match="weights.*sum to zero"):
        merge("weighted", srcs, weights=weights)


def test_weighted_requires_weights():
    with pytest.raises(MergeError, match="weights"):
        merge("weighted", TWO)


@pytest.mark.parametrize("method", list(METHODS))
def test_empty_source_list(method):
    kw = {"weights": []} if method == "weighted" else {}
    kw.update({"density": 0.5} if method in ("ties", "dare", "magnitude_prune", "prune_merged") else {})
    kw.update({"t": 0.5} if method == "slerp" else {})
    with pytest.raises(MergeError, match="sources"):
        merge(method, [], **kw)


def test_mismatched_shapes():
    with pytest.raises(MergeError, match=r"module 'm'.*shape mismatch.*\(4, 3\).*\(5, 3\)"):
        merge("average", [src(2, 4, 3), src(2, 5, 3)])
    with pytest.raises(MergeError, match="shape mismatch"):
        merge("ties", [src(2, 4, 3), src(2, 4, 6)], density=0.5)


def test_bad_factors():
    a = np.ones((2, 3), np.float32)
    b = np.ones((4, 3), np.float32)
    with pytest.raises(MergeError, match="rank mismatch"):
        merge("average", [{"m": (a, b, 1.0)}])
    with pytest.raises(MergeError, match="2-D"):
        merge("average", [{"m": (np.ones(3), np.ones((4, 1)), 1.0)}])
    with pytest.raises(MergeError, match="NaN"):
        merge("average", [{"m": (np.full((1, 3), np.nan), np.ones((4, 1)), 1.0)}])
    with pytest.raises(MergeError, match="scale"):
        merge("average", [{"m": (np.ones((1, 3)), np.ones((4, 1)), float("inf"))}])
    with pytest.raises(MergeError, match="tuple"):
        merge("average", [{"m": (np.ones((1, 3)), np.ones((4, 1)))}])
    with pytest.raises(MergeError, match=r"sources\[1\]"):
        merge("average", [src(2), "not an adapter"])
    with pytest.raises(MergeError, match="no adapter holds any module"):
        merge("average", [{}, {}])
    with pytest.raises(MergeError, match="sources"):
        merge("average", src(2))


def test_unknown_method_and_foreign_params():
    with pytest.raises(MergeError, match="unknown merge method 'lerp'"):
        merge("lerp", TWO)
    with pytest.raises(MergeError, match="density: method 'average' does not take density"):
        merge("average", TWO, density=0.5)
    with pytest.raises(MergeError, match="t: method 'ties' does not take t"):
        merge("ties", TWO, density=0.5, t=0.3)
    with pytest.raises(MergeError, match="seed"):
        merge("ties", TWO, density=0.5, seed=3)
    with pytest.raises(MergeError, match="lam"):
        merge("weighted", TWO, weights=[1, 1], lam=2.0)
    with pytest.raises(MergeError, match="dare_combine"):
        merge("ties", TWO, density=0.5, dare_combine="ties")


@pytest.mark.parametrize("rank", [0, -3, 2.5, "4", True])
def test_bad_rank(rank):
    with pytest.raises(MergeError, match="rank"):
        merge("average", TWO, rank=rank)


def test_bad_lam_seed_combine():
    with pytest.raises(MergeError, match="lam"):
        merge("task_arithmetic", TWO, lam=float("nan"))
    with pytest.raises(MergeError, match="seed"):
        merge("dare", TWO, density=0.5, seed="x")
    with pytest.raises(MergeError, match="dare_combine.*linear, ties"):
        merge("dare", TWO, density=0.5, dare_combine="magic")


def test_methods_are_callable_directly_with_the_same_checks():
    with pytest.raises(MergeError, match="density"):
        METHODS["ties"](TWO, density=0.0)
    res = METHODS["weighted"](TWO, weights=[1, 3])
    assert res.params["weights"] == [0.25, 0.75]
