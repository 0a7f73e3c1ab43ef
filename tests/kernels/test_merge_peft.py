"""Interop: TIES (and DARE at density 1) agree with PEFT's merge_utils on dense tensors."""

import warnings

import numpy as np
import pytest

from ruv_kernels.merge.sparsify import trim_inplace, trim_threshold
from ruv_kernels.merge.dare import dare_dense
from ruv_kernels.merge.ties import ties_dense

pytestmark = pytest.mark.reference

torch = pytest.importorskip("torch")
merge_utils = pytest.importorskip("peft.utils.merge_utils")


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.5, 2.0, 1.25]])
def test_ties_matches_peft(density, weights):
    rng = np.random.default_rng(0)
    d = rng.standard_normal((3, 33, 17)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that density 1 prunes nothing
        ref = merge_utils.ties([torch.from_numpy(x.copy()) for x in d], torch.tensor(weights), density)
    got = ties_dense(d, density, weights=weights)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6, atol=1e-6)


def test_trim_matches_peft_magnitude_pruning():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 25)).astype(np.float32)
    ref = merge_utils.magnitude_based_pruning(torch.from_numpy(x.copy()), 0.35).numpy()
    y = x.copy().reshape(-1)
    trim_inplace(y, trim_threshold(y, 0.35))
    np.testing.assert_array_equal(y.reshape(x.shape), ref)


def test_dare_at_density_one_matches_peft_task_arithmetic_and_dare_ties():
    rng = np.random.default_rng(2)
    d = rng.standard_normal((3, 12, 9)).astype(np.float32)
    w = [1.0, -0.5, 2.0]
    tensors = [torch.from_numpy(x.copy()) for x in d]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_lin = merge_utils.dare_linear(tensors, torch.tensor(w), 1.0).numpy()
        ref_ties = merge_utils.dare_ties(tensors, torch.tensor(w), 1.0).numpy()
    keys = [1, 2, 3]
    np.testing.assert_allclose(dare_dense(d.copy(), 1.0, keys, weights=w), ref_lin, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dare_dense(d.copy(), 1.0, keys, weights=w, combine="ties"), ref_ties,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("density", [0.2, 0.6])
def test_magnitude_prune_matches_peft(density):
    """`magnitude_prune` is PEFT's: each task pruned by magnitude, then the weighted sum."""
    from ruv_kernels.merge.magnitude_prune import merge as magnitude_prune

    rng = np.random.default_rng(3)
    srcs = [{"m": (rng.standard_normal((4, 11)).astype(np.float32), rng.standard_normal((9, 4)).astype(np.float32),
                   0.5)} for _ in range(3)]
    w = [1.0, 0.5, -2.0]
    tensors = [torch.from_numpy(s["m"][2] * (s["m"][1] @ s["m"][0])) for s in srcs]
    ref = merge_utils.magnitude_prune(tensors, torch.tensor(w), density).numpy()
    res = magnitude_prune(srcs, density=density, weights=w, rank=9)
    a, b = res.modules["m"]
    np.testing.assert_allclose(b @ a, ref, rtol=1e-4, atol=1e-4)
