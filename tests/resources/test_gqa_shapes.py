"""Grouped-query attention: k/v project hidden -> kv_heads * head_dim. Shapes come from the adapter
files, so adapters PEFT saved for a GQA model load, merge and promote; a declared geometry is still
enforced tensor by tensor."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ruv_kernels.adapter import AdapterSpec
from ruv_resources.errors import AdapterFormatError
from ruv_resources.peft_format import WEIGHTS_NAME, load_adapter, peft_key, save_adapter
from ruv_resources.slot import Slot
from ruv_resources.slot_reader import SlotReader
from ruv_assets.cli import main
from ruv_assets.catalogue.config import ModelGeometry
from tests.conftest import random_adapter

# SmolLM2-135M's attention at a tenth of its width: 9 heads of 4, 3 kv heads
GQA = dict(hidden_size=36, intermediate_size=96, num_layers=2, q_size=36, kv_size=12)


def peft_style(spec, directory, seed=0):
    """Save like PEFT: no ruv header, so every shape must be read off the tensors."""
    save_adapter(random_adapter(spec, seed), directory)
    tensors = load_file(str(directory / WEIGHTS_NAME))
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def test_geometry_with_heads():
    geo = ModelGeometry(hidden_size=576, intermediate_size=1536, num_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert (geo.q_size, geo.kv_size) == (576, 192)
    spec = __import__("ruv_assets.catalogue.presets", fromlist=["PRESETS"]).PRESETS[0].spec(geo)
    assert spec.shape_of("layers.0.k_proj") == (576, 192) and spec.shape_of("layers.0.o_proj") == (576, 576)
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads"):
        ModelGeometry(num_attention_heads=8, num_key_value_heads=3)
    with pytest.raises(ValueError, match="need num_attention_heads"):
        ModelGeometry(num_key_value_heads=3)


def test_peft_saved_gqa_adapter_loads_with_shapes_from_the_files(tmp_path):
    spec = AdapterSpec(4, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj"), 36, None, 2, q_size=36, kv_size=12)
    loaded = load_adapter(peft_style(spec, tmp_path))
    assert loaded.adapter.spec.shape_of("layers.1.v_proj") == (36, 12)
    assert loaded.adapter.spec.intermediate_size is None  # not guessed: no MLP module says it
    with pytest.raises(AdapterFormatError, match=r"k_proj.lora_B.weight: shape \[12, 4\], expected \[36, 4\]"):
        load_adapter(tmp_path, hidden_size=36, kv_size=36)


def test_inconsistent_tensors_are_named(tmp_path):
    spec = AdapterSpec(4, 8.0, ("k_proj", "v_proj"), 36, None, 1, kv_size=12)
    peft_style(spec, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    tensors[peft_key("layers.0.v_proj", "B")] = np.zeros((10, 4), np.float32)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(AdapterFormatError, match=r"v_proj.lora_B.weight gives kv_size 10, but .*k_proj.lora_B.weight gives 12"):
        load_adapter(tmp_path)


@pytest.mark.parametrize("method, extra", [("average", []), ("weighted", ["--weights", "0.7,0.3"]),
                                           ("task_arithmetic", ["--weights", "1,-0.5"]), ("slerp", ["--t", "0.3"]),
                                           ("ties", ["--density", "0.5"]), ("dare", ["--density", "0.5"]),
                                           ("magnitude_prune", ["--density", "0.5"])])
def test_gqa_adapters_merge_promote_and_serve(tmp_path, method, extra, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = peft_style(AdapterSpec(4, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj"), **GQA), tmp_path / "a", 1)
    b = peft_style(AdapterSpec(8, 16.0, ("k_proj", "v_proj", "gate_proj", "down_proj"), **GQA), tmp_path / "b", 2)
    out = tmp_path / "ab"
    assert main(["merge", method, str(a), str(b), "-o", str(out), *extra]) == 0, capsys.readouterr().err
    merged = load_adapter(out).adapter
    assert merged.spec.shape_of("layers.0.k_proj") == (36, 12) and merged.spec.shape_of("layers.1.down_proj") == (96, 36)
    slot_dir = tmp_path / "slots" / "ab"
    assert main(["slot", "promote", str(slot_dir), str(out), "--kv-size", "12"]) == 0
    assert main(["slot", "verify", str(slot_dir)]) == 0
    _, served = SlotReader(slot_dir).current()
    assert served.spec.shape_of("layers.1.v_proj") == (36, 12)
    assert main(["slot", "promote", str(slot_dir), str(a)]) == 0  # same base model: accepted without flags


def test_mismatched_sources_get_one_line(tmp_path, capsys):
    for d in ("gqa", "mha"):
        (tmp_path / d).mkdir()
    peft_style(AdapterSpec(4, 8.0, ("k_proj",), 36, None, 2, kv_size=12), tmp_path / "gqa")
    peft_style(AdapterSpec(4, 8.0, ("k_proj",), 36, None, 2), tmp_path / "mha")
    assert main(["merge", "average", str(tmp_path / "gqa"), str(tmp_path / "mha"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "k_proj is [36 -> 12]" in err and "[36 -> 36]" in err
    assert not (tmp_path / "out").exists()


def test_slot_refuses_another_base_model(tmp_path):
    for d in ("gqa", "mha"):
        (tmp_path / d).mkdir()
    peft_style(AdapterSpec(4, 8.0, ("k_proj",), 36, None, 2, kv_size=12), tmp_path / "gqa")
    peft_style(AdapterSpec(4, 8.0, ("k_proj",), 36, None, 2), tmp_path / "mha")
    slot = Slot(tmp_path / "slots", "s")
    slot.promote(tmp_path / "gqa")
    with pytest.raises(Exception, match="kv_size 36 \\(active has 12\\)"):
        slot.promote(tmp_path / "mha")
    assert json.loads((slot.path / "active" / "manifest.json").read_text())["geometry"]["kv_size"] == 12
