"""Adapters that PEFT saves for a real grouped-query-attention model (k/v: 576 -> 192) merge with
every method, promote, verify, load in SlotReader, and load back into PEFT on that model with no
missing or unexpected key."""

import copy

import pytest
import torch

from ruv_resources.peft_format import load_adapter
from ruv_resources.slot_reader import SlotReader
from ruv_assets.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]

METHODS = [("average", []), ("weighted", ["--weights", "0.7,0.3"]), ("task_arithmetic", ["--weights", "1,0.5"]),
           ("slerp", ["--t", "0.4"]), ("ties", ["--density", "0.4"]), ("dare", ["--density", "0.5"]),
           ("magnitude_prune", ["--density", "0.5"])]


def peft_save(model, directory, rank, targets, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                                                 init_lora_weights=False))
    peft_model.save_pretrained(str(directory))
    return directory


def load_into_peft(model, directory):
    """PEFT's own loader on the real model: returns (missing LoRA keys, unexpected keys)."""
    from peft import PeftModel, load_peft_weights, set_peft_model_state_dict

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(directory))
    result = set_peft_model_state_dict(peft_model, load_peft_weights(str(directory)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    return peft_model, missing, list(result.unexpected_keys)


@pytest.fixture(scope="module")
def two_adapters(smol, tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    a = peft_save(smol.model, root / "a", 8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 0)
    b = peft_save(smol.model, root / "b", 4, ("q_proj", "k_proj", "v_proj", "o_proj"), 1)
    return root, a, b


def test_peft_saved_adapters_load_with_their_shapes(two_adapters):
    _, a, b = two_adapters
    spec = load_adapter(a).adapter.spec
    assert spec.num_layers == 30 and spec.shape_of("layers.0.k_proj") == (576, 192) and spec.shape_of("layers.0.down_proj") == (1536, 576)
    assert load_adapter(b).adapter.spec.intermediate_size is None


@pytest.mark.parametrize("method, extra", METHODS)
def test_merge_every_method_and_load_back_into_peft(smol, two_adapters, method, extra, capsys):
    root, a, b = two_adapters
    out = root / f"merged-{method}"
    assert main(["merge", method, str(a), str(b), "-o", str(out), *extra]) == 0, capsys.readouterr().err
    peft_model, missing, unexpected = load_into_peft(smol.model, out)
    assert missing == [] and unexpected == []
    ids = torch.tensor([[smol.bos_id] + smol.encode("def add(a, b):")])
    with torch.no_grad():
        assert not torch.allclose(peft_model(ids).logits, smol.model(ids).logits)  # the merge does something


def test_promote_verify_and_serve(smol, two_adapters, capsys):
    root, a, _ = two_adapters
    slot = root / "slots" / "a"
    assert main(["slot", "promote", str(slot), str(a), "--kv-size", "192", "--num-layers", "30"]) == 0
    assert main(["slot", "verify", str(slot)]) == 0
    generation, adapter = SlotReader(slot).current()
    assert generation == 1 and adapter.spec.shape_of("layers.29.v_proj") == (576, 192)
    _, missing, unexpected = load_into_peft(smol.model, slot / "active")
    assert missing == [] and unexpected == []
    assert main(["slot", "promote", str(slot), str(a), "--kv-size", "576"]) == 2
    assert "shape [192, 8], expected [576, 8]" in capsys.readouterr().err
