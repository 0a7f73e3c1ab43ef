"""`ruv merge`: PEFT adapters in, a PEFT adapter out; bad input gives one line and no output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ruv_kernels.adapter import AdapterSpec
from ruv_resources.peft_format import load_adapter, save_adapter
from ruv_assets.cli import main
from tests.conftest import random_adapter

GEO = dict(hidden_size=24, intermediate_size=40, num_layers=2)


@pytest.fixture
def two(tmp_path):
    a = random_adapter(AdapterSpec(4, 8.0, ("q_proj", "v_proj"), **GEO), 1)
    b = random_adapter(AdapterSpec(2, 2.0, ("q_proj", "down_proj"), use_rslora=True, **GEO), 2)
    for name, adapter in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_adapter(adapter, tmp_path / name)
    return tmp_path, a, b


def test_weighted_merge_is_exact_across_ranks_and_modules(two, capsys):
    d, a, b = two
    assert main(["merge", "weighted", str(d / "a"), str(d / "b"), "-o", str(d / "out"), "--weights", "3,1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rank"] == 6 and report["reconstruction_error"] == 0.0
    merged = load_adapter(d / "out").adapter
    assert merged.spec.targets == ("q_proj", "v_proj", "down_proj")
    for key in merged.keys():
        expected = sum(w * s.delta(key) for w, s in ((0.75, a), (0.25, b)) if key in s.A)
        np.testing.assert_allclose(merged.delta(key), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_rank_compression_reports_error(two, capsys):
    d, _, _ = two
    assert main(["merge", "ties", str(d / "a"), str(d / "b"), "-o", str(d / "t"), "--density", "0.3", "--rank", "2"]) == 0
    assert "relative reconstruction error" in capsys.readouterr().out
    assert load_adapter(d / "t").adapter.spec.rank == 2


def test_peft_loads_the_merge(two):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    d, a, b = two
    assert main(["merge", "task_arithmetic", str(d / "a"), str(d / "b"), "-o", str(d / "ta"), "--weights", "1,-0.5", "--lambda", "0.8"]) == 0
    config = transformers.LlamaConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, vocab_size=16, max_position_embeddings=8)
    model = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM(config).eval(), str(d / "ta")).eval()
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    x = torch.randn(3, 24)
    with torch.no_grad():
        got = (layer(x) - layer.base_layer(x)).numpy()
    key = "layers.1.q_proj"
    expected = x.numpy() @ (0.8 * (a.delta(key) - 0.5 * b.delta(key))).T
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["slerp", "a", "b", "c", "--t", "0.5"], "exactly 2"),
        (["slerp", "a", "b", "--t", "1.5"], "t"),
        (["ties", "a", "b"], "requires density"),
        (["ties", "a", "b", "--density", "0"], "density"),
        (["dare", "a", "b", "--density", "1.5"], "density"),
        (["weighted", "a", "b", "--weights", "1,-1"], "sum"),
        (["weighted", "a", "b", "--weights", "1,2,3"], "weights"),
        (["average", "a", "missing"], "not a directory"),
        (["average", "a", "b", "--t", "0.3"], "does not take t"),
    ],
)
def test_bad_input_one_line_no_output(two, capsys, argv, message):
    d, _, _ = two
    (d / "c").mkdir()
    save_adapter(random_adapter(AdapterSpec(4, 8.0, ("q_proj",), **GEO)), d / "c")
    method, *rest = argv
    args = [method] + [str(d / x) if x in ("a", "b", "c", "missing") else x for x in rest]
    before = sorted(os.listdir(d))
    assert main(["merge", *args, "-o", str(d / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("ruv merge: error:")
    assert sorted(os.listdir(d)) == before, "no output directory (or temporary) is left behind"


def test_refuses_existing_output_and_mismatched_geometry(two, capsys):
    d, _, _ = two
    (d / "taken").mkdir()
    assert main(["merge", "average", str(d / "a"), str(d / "b"), "-o", str(d / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    (d / "other").mkdir()
    save_adapter(random_adapter(AdapterSpec(4, 8.0, ("q_proj",), hidden_size=32, intermediate_size=40, num_layers=2)), d / "other")
    assert main(["merge", "average", str(d / "a"), str(d / "other"), "-o", str(d / "out")]) == 2
    assert "different model geometries" in capsys.readouterr().err
    assert not (d / "out").exists()


def test_corrupt_input_through_the_executable(two):
    d, _, _ = two
    data = (d / "b" / "adapter_model.safetensors").read_bytes()
    (d / "b" / "adapter_model.safetensors").write_bytes(data[:100])
    ruv = Path(sys.executable).with_name("ruv")
    res = subprocess.run([str(ruv), "merge", "average", str(d / "a"), str(d / "b"), "-o", str(d / "out")], capture_output=True, text=True)
    assert res.returncode == 2 and "corrupt or partial" in res.stderr and not (d / "out").exists()


def test_peft_saved_attention_only_and_mlp_adapters_merge(tmp_path):
    """PEFT writes no geometry: an attention-only adapter's intermediate size is unknown, not a mismatch."""
    import json as _json

    a = random_adapter(AdapterSpec(4, 8.0, ("q_proj", "v_proj"), **GEO), 1)
    b = random_adapter(AdapterSpec(2, 2.0, ("q_proj", "down_proj"), **GEO), 2)
    for name, adapter in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_adapter(adapter, tmp_path / name)
        # strip our header, as a PEFT-saved file has none
        from safetensors.numpy import load_file, save_file
        weights = tmp_path / name / "adapter_model.safetensors"
        save_file(load_file(str(weights)), str(weights), metadata={"format": "pt"})
    assert main(["merge", "average", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out")]) == 0
    merged = load_adapter(tmp_path / "out").adapter
    assert merged.spec.intermediate_size == 40
    key = "layers.1.down_proj"
    np.testing.assert_allclose(merged.delta(key), 0.5 * b.delta(key), rtol=1e-5, atol=1e-6)
    assert _json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 6


def test_output_follows_the_umask_not_mkdtemp(two):
    """A server running as another user must be able to read a merge (mkdtemp makes 0700)."""
    d, _, _ = two
    old = os.umask(0o022)
    try:
        assert main(["merge", "average", str(d / "a"), str(d / "b"), "-o", str(d / "o")]) == 0
    finally:
        os.umask(old)
    assert (d / "o").stat().st_mode & 0o777 == 0o755
