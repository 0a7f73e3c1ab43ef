"""The fused dense kernels against the reference compositions of small pure steps
(`kernels.merge.steps`), on sizes that cross tile boundaries, with ties, zeros and odd shapes."""

import numpy as np
import pytest

from ruv_kernels.merge import merge, steps
from ruv_kernels.merge.generalized import sparse_merge_into
from ruv_kernels.merge.sparsify import TILE, dare_key, dare_mask, prune_inplace


def stack_of(seed, t, n):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((t, n)).astype(np.float32)
    s[:, ::7] = 0.0  # exact zeros: no task agrees there
    s[:, 5::11] = 0.5  # ties at a common magnitude
    return s


def fused(stack, **kw):
    work = stack.copy()
    out = np.empty(stack.shape[1], np.float32)
    return sparse_merge_into(work, out, **kw)


@pytest.mark.parametrize("n", [1, 13, 2 * TILE + 37])
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_ties_fused_equals_steps(n, density):
    s = stack_of(n, 3, n)
    w = [1.0, 0.5, 2.0]
    got = fused(s, sparsify="magnitude", density=density, weights=w, lam=1.3, consensus=True)
    np.testing.assert_allclose(got, steps.ties(s, density, w, 1.3), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 13, 2 * TILE + 37])
@pytest.mark.parametrize("consensus", [False, True])
def test_dare_fused_equals_steps(n, consensus):
    s = stack_of(n + 1, 3, n)
    w = [1.0, -0.5, 2.0]
    keys = [dare_key(7, i, "layers.0.q_proj") for i in range(3)]
    got = fused(s, sparsify="random", density=0.4, weights=w, lam=0.9, consensus=consensus, keys=keys)
    ref = (steps.dare_ties if consensus else steps.dare_linear)(s, 0.4, keys, w, 0.9)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 13, 2 * TILE + 37])
def test_random_mask_kernel_equals_steps(n):
    key = dare_key(3, 1, "m")
    np.testing.assert_array_equal(dare_mask(n, 0.3, key), steps.random_mask(n, 0.3, key))


@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_magnitude_prune_fused_equals_steps(density):
    s = stack_of(5, 4, 3 * TILE + 5)
    w = [1.0, 2.0, -1.0, 0.25]
    got = fused(s, sparsify="magnitude", density=density, weights=w, lam=1.1, consensus=False)
    np.testing.assert_allclose(got, steps.magnitude_prune(s, density, w, 1.1), rtol=1e-6, atol=1e-6)


def test_prune_inplace_equals_steps():
    x = stack_of(9, 1, 1001)[0]
    y = x.copy()
    prune_inplace(y, 0.3)
    np.testing.assert_array_equal(y, steps.prune_magnitude(x, 0.3))
    assert not np.array_equal(x, y)  # the step is pure, the kernel works in place


def test_magnitude_prune_prunes_each_task_and_prune_merged_the_sum():
    """The two methods differ exactly as their references do, through merge() end to end."""
    rng = np.random.default_rng(4)
    srcs = [{"m": (rng.standard_normal((3, 10)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32),
                   1.0)} for _ in range(2)]
    deltas = np.stack([s["m"][1] @ s["m"][0] for s in srcs]).reshape(2, -1)
    for method, ref in (("magnitude_prune", steps.magnitude_prune), ("prune_merged", steps.prune_merged)):
        res = merge(method, srcs, density=0.3, weights=[1.0, 0.5], rank=8)
        a, b = res.modules["m"]
        np.testing.assert_allclose((b @ a).reshape(-1), ref(deltas, 0.3, [1.0, 0.5]), rtol=1e-4, atol=1e-4)
    assert not np.allclose(steps.magnitude_prune(deltas, 0.3, [1.0, 0.5]), steps.prune_merged(deltas, 0.3, [1.0, 0.5]))


def test_padding_with_zero_tasks_changes_nothing():
    """fused_args(pad_to=...) lets a merge compile the consensus kernel once; it must be exact."""
    s = stack_of(11, 3, TILE + 9)
    w = [1.0, 0.5, 2.0]
    plain = fused(s, sparsify="magnitude", density=0.3, weights=w, lam=1.0, consensus=True)
    padded = sparse_merge_into(s.copy(), np.empty(s.shape[1], np.float32), sparsify="magnitude", density=0.3,
                               weights=w, lam=1.0, consensus=True, pad_to=5)
    np.testing.assert_array_equal(plain, padded)
