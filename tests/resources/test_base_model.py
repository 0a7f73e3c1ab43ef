"""Reading a base model's geometry without running it: config.json directories and GGUF headers,
and the refusals (missing, pickled weights only, remote code, other architectures, bad headers)."""

import json
import struct

import pytest

from ruv_resources.base_model import BaseModelError, content_hash, read_base_model, read_gguf_metadata

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
         "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 100}


def hf_dir(tmp_path, config=LLAMA, weights="model.safetensors"):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if weights:
        (d / weights).write_bytes(b"x")
    return d


def gguf_file(tmp_path, kv: dict, version=3, name="m.gguf"):
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, 0, len(kv)))
    for key, value in kv.items():
        out += struct.pack("<Q", len(key)) + key.encode()
        if isinstance(value, str):
            out += struct.pack("<IQ", 8, len(value)) + value.encode()
        elif isinstance(value, list):
            out += struct.pack("<IIQ", 9, 8, len(value))
            for item in value:
                out += struct.pack("<Q", len(item)) + item.encode()
        else:
            out += struct.pack("<II", 4, value)
    path = tmp_path / name
    path.write_bytes(bytes(out))
    return path


def test_hf_directory_geometry(tmp_path):
    info = read_base_model(hf_dir(tmp_path))
    assert (info.hidden_size, info.intermediate_size, info.num_layers) == (64, 160, 3)
    assert (info.num_attention_heads, info.num_key_value_heads, info.head_dim) == (8, 2, 8)
    assert info.architecture == "llama" and info.kind == "hf_dir"


def test_gguf_header_geometry(tmp_path):
    path = gguf_file(tmp_path, {"general.architecture": "llama", "llama.embedding_length": 576, "llama.feed_forward_length": 1536,
                                "llama.block_count": 30, "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3,
                                "tokenizer.ggml.tokens": ["a", "b", "c"]})
    info = read_base_model(path)
    assert (info.hidden_size, info.intermediate_size, info.num_layers, info.num_attention_heads, info.num_key_value_heads,
            info.head_dim, info.vocab_size) == (576, 1536, 30, 9, 3, 64, 3)
    assert read_gguf_metadata(path)["tokenizer.ggml.tokens.count"] == 3


@pytest.mark.parametrize("case, message", [
    ("missing", "no such model"),
    ("bin_only", "only pickled .bin weights"),
    ("remote_code", "trust_remote_code"),
    ("other_arch", "model_type 'gpt2' is not a supported architecture"),
    ("bad_json", "not valid JSON"),
    ("no_heads", "num_attention_heads must be a positive integer"),
])
def test_model_directory_refusals(tmp_path, case, message):
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case == "bin_only":
        path = hf_dir(tmp_path, weights="pytorch_model.bin")
    elif case == "remote_code":
        path = hf_dir(tmp_path, {**LLAMA, "auto_map": {"AutoModelForCausalLM": "x.Model"}})
    elif case == "other_arch":
        path = hf_dir(tmp_path, {**LLAMA, "model_type": "gpt2"})
    elif case == "bad_json":
        path = hf_dir(tmp_path)
        (path / "config.json").write_text("{")
    else:
        path = hf_dir(tmp_path, {k: v for k, v in LLAMA.items() if k != "num_attention_heads"})
    with pytest.raises(BaseModelError, match=message):
        read_base_model(path)


def test_gguf_refusals(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(BaseModelError, match="bad magic"):
        read_base_model(tmp_path / "bad.gguf")
    full = gguf_file(tmp_path, {"general.architecture": "llama", "llama.embedding_length": 64})
    (tmp_path / "cut.gguf").write_bytes(full.read_bytes()[:-3])
    with pytest.raises(BaseModelError, match="truncated"):
        read_base_model(tmp_path / "cut.gguf")
    with pytest.raises(BaseModelError, match="GGUF metadata llama.attention.head_count is missing"):
        read_base_model(full)
    with pytest.raises(BaseModelError, match="'gpt2' is not a supported"):
        read_base_model(gguf_file(tmp_path, {"general.architecture": "gpt2"}, name="g.gguf"))


def test_content_hash_follows_the_bytes(tmp_path):
    d = hf_dir(tmp_path)
    before = content_hash(d)
    assert content_hash(d) == before
    (d / "model.safetensors").write_bytes(b"y")
    assert content_hash(d) != before
