"""Interop with PEFT itself (the `reference` extra): PEFT loads what we save and computes the same
forward; we load what PEFT saves and compute the same delta."""

import numpy as np
import pytest

from ruv_kernels.adapter import AdapterSpec
from ruv_resources.peft_format import load_adapter, save_adapter
from tests.conftest import random_adapter

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.reference
HIDDEN, INTER, LAYERS = 32, 48, 2


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=64, max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


def module_of(model, key):
    _, layer, module = key.split(".")
    block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return getattr(getattr(model.base_model.model.model.layers[int(layer)], block), module)


@pytest.mark.parametrize("dtype,use_rslora", [("float32", False), ("float16", False), ("float32", True)])
def test_peft_loads_ours_and_agrees(tmp_path, dtype, use_rslora):
    spec = AdapterSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "gate_proj", "down_proj"), hidden_size=HIDDEN,
                       intermediate_size=INTER, num_layers=LAYERS, dropout=0.1, use_rslora=use_rslora)
    ours = random_adapter(spec, seed=7)
    save_adapter(ours, tmp_path, dtype=dtype)
    model = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].use_rslora is use_rslora
    x = np.random.default_rng(0).standard_normal((5, HIDDEN)).astype(np.float32)
    xi = np.random.default_rng(1).standard_normal((5, INTER)).astype(np.float32)
    for key in spec.keys():
        layer = module_of(model, key)
        inp = xi if key.endswith("down_proj") else x
        with torch.no_grad():
            t = torch.from_numpy(inp)
            peft_delta_out = (layer(t) - layer.base_layer(t)).numpy()
        tol = 2e-2 if dtype == "float16" else 1e-4
        np.testing.assert_allclose(ours.forward(key, inp), peft_delta_out, rtol=tol, atol=tol)


def test_we_load_what_peft_saves(tmp_path):
    config = peft.LoraConfig(r=6, lora_alpha=12, target_modules=["q_proj", "o_proj", "up_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(tiny_llama(), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(str(tmp_path))
    loaded = load_adapter(tmp_path)
    spec = loaded.adapter.spec
    assert (spec.rank, spec.alpha, spec.targets) == (6, 12.0, ("q_proj", "o_proj", "up_proj"))
    assert (spec.hidden_size, spec.intermediate_size, spec.num_layers) == (HIDDEN, INTER, LAYERS)
    for key in spec.keys():
        layer = module_of(model, key)
        expected = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().numpy() * layer.scaling["default"]
        np.testing.assert_allclose(loaded.adapter.delta(key), expected, rtol=1e-4, atol=1e-5)
