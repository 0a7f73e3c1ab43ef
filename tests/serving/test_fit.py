"""The plugin's fit check (serve/ruv_vllm/fit.py, standard library only), without a server: what
it accepts and the one line it refuses with."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "serve"))

from ruv_vllm.fit import DoesNotFit, ServedShapes, check_fits  # noqa: E402

from ruv_assets.serving.probe_adapters import write_probe_adapter  # noqa: E402

SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(SMOL))
    (d / "model.safetensors").write_bytes(b"")  # the probe adapters read only the shapes
    return d


@pytest.fixture
def shapes(model_dir):
    return ServedShapes.from_model_dir(model_dir, 64)


def test_accepts_an_adapter_of_the_served_shapes(tmp_path, model_dir, shapes):
    adapter = write_probe_adapter(tmp_path / "a", model_dir, 1, rank=16,
                                  modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert check_fits(adapter, shapes) == {"rank": 16, "modules": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], "layers": 30}


def test_refuses_another_base_model(tmp_path, model_dir, shapes):
    adapter = write_probe_adapter(tmp_path / "a", model_dir, 1, num_layers=2, dims={"q_proj": (768, 768), "v_proj": (768, 768)})
    with pytest.raises(DoesNotFit, match=r"shape \[8, 768\], the served model needs \[8, 576\].*another base model"):
        check_fits(adapter, shapes)


def test_refuses_a_wrong_kv_width(tmp_path, model_dir, shapes):
    adapter = write_probe_adapter(tmp_path / "a", model_dir, 1, modules=("k_proj",), num_layers=30,
                                  dims={"k_proj": (576, 576)})  # MHA widths on a GQA model
    with pytest.raises(DoesNotFit, match=r"k_proj.*needs \[192, 8\]"):
        check_fits(adapter, shapes)


def test_refuses_a_rank_above_the_servers(tmp_path, model_dir):
    adapter = write_probe_adapter(tmp_path / "a", model_dir, 1, rank=32)
    with pytest.raises(DoesNotFit, match="rank 32 is above the server's --max-lora-rank 16"):
        check_fits(adapter, ServedShapes.from_model_dir(model_dir, 16))


@pytest.mark.parametrize("change, message", [({"use_dora": True}, "DoRA"), ({"bias": "all"}, "bias"),
                                              ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
                                              ({"peft_type": "IA3"}, "not a LoRA adapter")])
def test_refuses_what_vllm_cannot_serve(tmp_path, model_dir, shapes, change, message):
    adapter = write_probe_adapter(tmp_path / "a", model_dir, 1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(DoesNotFit, match=message):
        check_fits(adapter, shapes)


def test_refuses_a_partial_file(tmp_path, model_dir, shapes):
    adapter = write_probe_adapter(tmp_path / "a", model_dir, 1)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DoesNotFit, match="partial file"):
        check_fits(adapter, shapes)
    weights.write_bytes(b"\x01")
    with pytest.raises(DoesNotFit, match="truncated"):
        check_fits(adapter, shapes)
