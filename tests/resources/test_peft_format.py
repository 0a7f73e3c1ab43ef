"""PEFT-layout save/load: key names, config, metadata, dtypes, and every bad input named."""

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ruv_resources.errors import AdapterFormatError
from ruv_resources.peft_format import CONFIG_NAME, WEIGHTS_NAME, load_adapter, peft_key, save_adapter
from tests.conftest import random_adapter


def test_layout_keys_and_config(small_spec, tmp_path):
    adapter = random_adapter(small_spec)
    save_adapter(adapter, tmp_path, metadata={"name": "x", "version": "1.2.3"})
    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="numpy") as f:
        keys = set(f.keys())
        header = f.metadata()
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert len(keys) == 2 * len(adapter.keys())
    assert header["format"] == "pt"
    assert json.loads(header["ruv.metadata"])["version"] == "1.2.3"
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["lora_dropout"] == 0.05
    assert config["target_modules"] == ["q_proj", "v_proj", "down_proj"] and config["use_rslora"] is False
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert tensors[peft_key("layers.1.down_proj", "A")].shape == (4, 40)
    assert tensors[peft_key("layers.1.down_proj", "B")].shape == (24, 4)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(small_spec, tmp_path, dtype):
    adapter = random_adapter(small_spec)
    save_adapter(adapter, tmp_path, metadata={"k": 1}, dtype=dtype)
    loaded = load_adapter(tmp_path)
    assert loaded.dtype == dtype and loaded.metadata == {"k": 1}
    assert loaded.adapter.spec == small_spec
    for key in adapter.keys():
        np.testing.assert_allclose(loaded.adapter.A[key], adapter.A[key], rtol=1e-3 if dtype == "float16" else 0)
        np.testing.assert_allclose(loaded.adapter.B[key], adapter.B[key], rtol=1e-3 if dtype == "float16" else 0, atol=1e-3 if dtype == "float16" else 0)


def _saved(spec, tmp_path):
    save_adapter(random_adapter(spec), tmp_path)
    return load_file(str(tmp_path / WEIGHTS_NAME))


def test_missing_tensor_is_named(small_spec, tmp_path):
    tensors = _saved(small_spec, tmp_path)
    gone = peft_key("layers.1.v_proj", "B")
    del tensors[gone]
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(AdapterFormatError, match=f"missing tensor {gone}"):
        load_adapter(tmp_path)


def test_wrong_shape_is_named(small_spec, tmp_path):
    tensors = _saved(small_spec, tmp_path)
    name = peft_key("layers.0.q_proj", "A")
    tensors[name] = np.zeros((4, 23), np.float32)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt", "ruv.geometry": json.dumps({"hidden_size": 24, "intermediate_size": 40, "num_layers": 2})})
    with pytest.raises(AdapterFormatError, match=rf"{name}: shape \[4, 23\], expected \[4, 24\]"):
        load_adapter(tmp_path)


def test_nan_is_named(small_spec, tmp_path):
    tensors = _saved(small_spec, tmp_path)
    name = peft_key("layers.0.v_proj", "B")
    tensors[name][0, 0] = np.nan
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(AdapterFormatError, match=f"{name}: has non-finite"):
        load_adapter(tmp_path)


def test_wrong_dtype_is_named(small_spec, tmp_path):
    tensors = _saved(small_spec, tmp_path)
    name = peft_key("layers.0.q_proj", "B")
    tensors[name] = tensors[name].astype(np.float64)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(AdapterFormatError, match=f"{name}: dtype float64"):
        load_adapter(tmp_path)


def test_truncated_file_is_reported(small_spec, tmp_path):
    _saved(small_spec, tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFormatError, match="corrupt or partial"):
        load_adapter(tmp_path)


def test_bad_config_and_missing_files(small_spec, tmp_path):
    with pytest.raises(AdapterFormatError, match="not a directory"):
        load_adapter(tmp_path / "nope")
    _saved(small_spec, tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        load_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "IA3", "r": 4, "lora_alpha": 8}))
    with pytest.raises(AdapterFormatError, match="only LORA"):
        load_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(AdapterFormatError, match="adapter_config.json"):
        load_adapter(tmp_path)


def test_enforced_geometry(small_spec, tmp_path):
    _saved(small_spec, tmp_path)
    with pytest.raises(AdapterFormatError, match="shape"):
        load_adapter(tmp_path, hidden_size=32)
    with pytest.raises(AdapterFormatError, match="outside the 1-layer geometry"):
        load_adapter(tmp_path, num_layers=1)


def test_refuses_to_save_nan(small_spec, tmp_path):
    adapter = random_adapter(small_spec)
    adapter.A["layers.0.q_proj"][0, 0] = np.inf
    with pytest.raises(AdapterFormatError, match="non-finite"):
        save_adapter(adapter, tmp_path)
