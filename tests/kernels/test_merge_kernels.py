"""The Numba kernels of the dense paths on their own: selection, trim, sign election,
disjoint mean, the fused pass, and independence from the thread count."""

import numba
import numpy as np
import pytest

from ruv_kernels.merge import steps
from ruv_kernels.merge.fused import fused_args, ties_fused, weighted_sum_into
from ruv_kernels.merge.generalized import ties_into
from ruv_kernels.merge.select import kth_largest_abs, trim_thresholds
from ruv_kernels.merge.sparsify import TILE, dare_apply, trim_inplace, trim_threshold


def kth_ref(x, k):
    a = np.sort(np.abs(x.ravel()))[::-1]
    return a[k - 1]


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 65537])
def test_kth_largest_abs_matches_sort(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * rng.choice([1e-30, 1e-3, 1.0, 1e6], n)).astype(np.float32)
    for k in sorted({1, max(1, n // 3), max(1, n // 2), n - 1, n} - {0}):
        assert kth_largest_abs(x, k) == np.float32(kth_ref(x, k))


def test_kth_largest_abs_with_ties_zeros_and_signed_zero():
    x = np.array([0.0, -0.0, 1.0, -1.0, 1.0, 2.0, -2.0, 0.5, 0.0], np.float32)
    assert kth_largest_abs(x, 1) == 2.0
    assert kth_largest_abs(x, 2) == 2.0
    assert kth_largest_abs(x, 3) == 1.0
    assert kth_largest_abs(x, 6) == 0.5
    assert kth_largest_abs(x, 7) == 0.0
    assert kth_largest_abs(x, 0) == np.inf
    assert kth_largest_abs(x, 9) == 0.0
    assert kth_largest_abs(x, 50) == 0.0
    # subnormals sort correctly by bits
    y = np.array([1e-45, 1e-44, 1e-40, 0.0], np.float32)
    assert kth_largest_abs(y, 2) == np.sort(np.abs(y))[::-1][1]


def test_trim_keeps_top_k_exactly_without_ties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10001).astype(np.float32)
    k = int(0.3 * x.size)
    y = x.copy()
    trim_inplace(y, trim_threshold(y, 0.3))
    assert np.count_nonzero(y) == k
    top = np.argsort(-np.abs(x))[:k]
    np.testing.assert_array_equal(np.sort(np.flatnonzero(y)), np.sort(top))


def test_fused_equals_composition_of_steps():
    rng = np.random.default_rng(1)
    t, n = 4, 3 * TILE + 123  # crosses tile and chunk boundaries
    stack = rng.standard_normal((t, n)).astype(np.float32)
    w = np.array([1.0, 0.5, 2.0, 0.25], np.float32)
    thr = np.array([trim_threshold(stack[i], 0.3) for i in range(t)], np.float32)
    out = np.empty(n, np.float32)
    ties_fused(*fused_args(stack, thr, w), 1.3, out)
    trimmed = stack.copy()
    for i in range(t):
        trim_inplace(trimmed[i], thr[i])
    sign = steps.elect_sign(trimmed)
    out2 = np.float32(1.3) * steps.disjoint_merge(trimmed, w, sign)
    np.testing.assert_allclose(out, out2, rtol=1e-6, atol=1e-7)
    # and the sign kernel is the summed-mass rule
    np.testing.assert_array_equal(sign, np.where(trimmed.sum(0) >= 0, 1.0, -1.0).astype(np.float32))


def test_weighted_sum_into():
    rng = np.random.default_rng(2)
    stack = rng.standard_normal((3, 10000)).astype(np.float32)
    out = np.empty(10000, np.float32)
    weighted_sum_into(stack, np.array([0.5, -1.0, 2.0]), out)
    np.testing.assert_allclose(out, 0.5 * stack[0] - stack[1] + 2.0 * stack[2], rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((3, 200_003)).astype(np.float32)
    old = numba.get_num_threads()
    outs = []
    try:
        for nt in sorted({1, old}):
            numba.set_num_threads(nt)
            o = np.empty(stack.shape[1], np.float32)
            ties_into(stack, 0.2, [1.0, 1.0, 1.0], 1.0, o)
            x = stack[0].copy()
            dare_apply(x, 0.3, 12345)
            outs.append((o, x, kth_largest_abs(stack[1], 777)))
    finally:
        numba.set_num_threads(old)
    for o, x, k in outs[1:]:
        np.testing.assert_array_equal(o, outs[0][0])
        np.testing.assert_array_equal(x, outs[0][1])
        assert k == outs[0][2]


def test_every_kernel_is_cached():
    from numba.core.registry import CPUDispatcher

    from ruv_kernels.merge import fused, select, sparsify

    kernels = [v for mod in (fused, select, sparsify) for v in vars(mod).values() if isinstance(v, CPUDispatcher)]
    assert kernels
    for k in kernels:
        assert type(k._cache).__name__ != "NullCache", f"{k.__name__} lacks cache=True"


@pytest.mark.parametrize("layout", ["normal", "sorted", "constant", "periodic", "sparse", "heavy"])
@pytest.mark.parametrize("density", [0.001, 0.2, 0.5, 0.97, 1.0])
def test_kth_largest_abs_large_arrays_every_path(layout, density):
    """Large arrays of awkward layouts: ties, sorted runs, periodic spikes, many zeros."""
    rng = np.random.default_rng(7)
    n = 300_007
    if layout == "normal":
        x = rng.standard_normal(n)
    elif layout == "sorted":
        x = np.sort(rng.standard_normal(n))
    elif layout == "constant":
        x = np.full(n, -0.5)
    elif layout == "periodic":
        x = np.where(np.arange(n) % 9 == 0, 100.0, rng.standard_normal(n))
    elif layout == "sparse":
        x = np.where(rng.random(n) < 0.01, rng.standard_normal(n), 0.0)
    else:
        x = rng.standard_cauchy(n)
    x = x.astype(np.float32)
    k = max(1, int(density * n))
    expected = np.partition(np.abs(x), n - k)[n - k]
    assert kth_largest_abs(x, k) == expected



@pytest.mark.parametrize("density", [0.0001, 0.3, 0.999, 1.0])
def test_trim_thresholds_rows_match_single_row(density):
    rng = np.random.default_rng(9)
    stack = np.stack([rng.standard_normal(70_001), rng.standard_cauchy(70_001),
                      np.where(rng.random(70_001) < 0.1, 1.0, 0.0)]).astype(np.float32)
    got = trim_thresholds(stack, density)
    for i in range(3):
        assert got[i] == trim_threshold(stack[i], density)
        k = int(density * stack.shape[1])
        if k:
            assert got[i] == np.sort(np.abs(stack[i]))[::-1][k - 1]
