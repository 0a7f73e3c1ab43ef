"""LoRA kernels against plain numpy, including odd shapes and rank 1."""

import numpy as np
import pytest

from ruv_kernels import lora
from ruv_kernels.adapter import AdapterSpec, LoraAdapter, split_key
from ruv_kernels.modules import lora_scale, module_shape
from tests.conftest import random_adapter


@pytest.mark.parametrize("n,n_in,n_out,r", [(1, 1, 1, 1), (7, 13, 5, 1), (33, 17, 29, 3), (0, 8, 6, 2)])
def test_forward_batch_matches_numpy(n, n_in, n_out, r):
    rng = np.random.default_rng(n + n_in)
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    A = rng.standard_normal((r, n_in)).astype(np.float32)
    B = rng.standard_normal((n_out, r)).astype(np.float32)
    out = lora.forward_batch(X, A, B, 0.75)
    np.testing.assert_allclose(out, 0.75 * X @ A.T @ B.T, rtol=1e-5, atol=1e-5)
    assert out.shape == (n, n_out)


@pytest.mark.parametrize("n_in,n_out,r", [(1, 1, 1), (13, 5, 1), (768, 768, 16)])
def test_forward_vector_and_delta_match_numpy(n_in, n_out, r):
    rng = np.random.default_rng(r)
    x = rng.standard_normal(n_in).astype(np.float32)
    A = rng.standard_normal((r, n_in)).astype(np.float32)
    B = rng.standard_normal((n_out, r)).astype(np.float32)
    dense = 2.0 * B.astype(np.float64) @ A
    np.testing.assert_allclose(lora.delta(A, B, 2.0), dense, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lora.forward_vector(x, A, B, 2.0), dense @ x, rtol=1e-4, atol=1e-3)


def test_forward_rejects_wrong_input_width():
    A, B = np.ones((2, 5), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"expected \[n, 5\]"):
        lora.forward_batch(np.ones((4, 6), np.float32), A, B, 1.0)
    with pytest.raises(ValueError, match=r"expected \[5\]"):
        lora.forward_vector(np.ones(6, np.float32), A, B, 1.0)


def test_initialisation_is_peft_like_and_seeded(small_spec):
    a = LoraAdapter.initialise(small_spec, seed=3)
    b = LoraAdapter.initialise(small_spec, seed=3)
    c = LoraAdapter.initialise(small_spec, seed=4)
    for key in a.keys():
        n_in, n_out = small_spec.shape_of(key)
        assert a.A[key].shape == (4, n_in) and a.B[key].shape == (n_out, 4)
        assert a.A[key].dtype == np.float32
        assert np.abs(a.A[key]).max() <= 1 / np.sqrt(n_in)
        assert not a.B[key].any(), "B starts at zero, so a fresh adapter is the identity"
        np.testing.assert_array_equal(a.A[key], b.A[key])
        assert not np.array_equal(a.A[key], c.A[key])


def test_adapter_forward_is_s_B_A_x(small_spec):
    adapter = random_adapter(small_spec)
    key = "layers.1.down_proj"
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    expected = x @ (small_spec.scale * adapter.B[key] @ adapter.A[key]).T
    np.testing.assert_allclose(adapter.forward(key, x), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(adapter.forward(key, x[0]), expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(adapter.delta(key), small_spec.scale * adapter.B[key] @ adapter.A[key], rtol=1e-5)
    with pytest.raises(KeyError, match="no module 'layers.0.k_proj'"):
        adapter.forward("layers.0.k_proj", x)


def test_params_use_real_module_shapes():
    spec = AdapterSpec(rank=16, alpha=32, targets=("q_proj", "gate_proj", "down_proj"), hidden_size=768, intermediate_size=3072, num_layers=2)
    assert spec.param_count() == 2 * 16 * ((768 + 768) + (768 + 3072) + (3072 + 768))
    assert spec.memory_bytes() == 4 * spec.param_count()
    assert module_shape("down_proj", 768, 3072) == (3072, 768)


def test_scale_and_rslora():
    assert lora_scale(32, 16) == 2.0
    assert lora_scale(32, 16, use_rslora=True) == 8.0


@pytest.mark.parametrize("bad", ["layers.x.q_proj", "layer.0.q_proj", "layers.0.foo", "q_proj"])
def test_bad_keys(bad):
    with pytest.raises(ValueError, match="bad module key"):
        split_key(bad)


@pytest.mark.parametrize("field,value,message", [("rank", 0, "rank"), ("alpha", 0.0, "alpha"), ("targets", ("x_proj",), "unknown target"), ("targets", (), "at least one")])
def test_spec_validates(field, value, message):
    kwargs = dict(rank=2, alpha=4.0, targets=("q_proj",), hidden_size=8, intermediate_size=16, num_layers=1)
    kwargs[field] = value
    with pytest.raises(ValueError, match=message):
        AdapterSpec(**kwargs)


@pytest.mark.parametrize("m,n_in,n_out,r", [(1, 5, 3, 1), (4, 17, 9, 3)])
def test_forward_stacked_matches_per_module(m, n_in, n_out, r):
    rng = np.random.default_rng(m)
    X = rng.standard_normal((m, n_in)).astype(np.float32)
    A = rng.standard_normal((m, r, n_in)).astype(np.float32)
    B = rng.standard_normal((m, n_out, r)).astype(np.float32)
    Bt = np.ascontiguousarray(B.transpose(0, 2, 1))
    out = lora.forward_stacked_into(X, A, Bt, np.float32(0.5), np.empty(r, np.float32), np.empty((m, n_out), np.float32))
    for i in range(m):
        np.testing.assert_allclose(out[i], 0.5 * B[i] @ (A[i] @ X[i]), rtol=1e-5, atol=1e-5)


def test_forward_propagates_nan():
    A, B = np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)
    x = np.array([1.0, np.nan, 2.0], np.float32)
    assert np.isnan(lora.forward_vector(x, A, B, 1.0)).all()


def test_adapter_is_finite(small_spec):
    from tests.conftest import random_adapter

    adapter = random_adapter(small_spec)
    assert adapter.is_finite()
    adapter.B["layers.1.v_proj"][2, 1] = np.inf
    assert not adapter.is_finite()
