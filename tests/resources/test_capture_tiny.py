"""Capture on a tiny random Llama (no download): the teacher-forced statistics equal what hooks on
the real modules record (`C = X^T R` with `R = Y_teacher - X @ W0^T`), and sequential fitting of a
teacher that is the base plus a delta recovers it. Fast stand-ins for the SmolLM2 tests."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ruv_kernels.adapter import AdapterSpec  # noqa: E402
from ruv_resources.capture.fit import capture_statistics, fit_layer, fit_sequential  # noqa: E402
from ruv_resources.capture.models import LoadedModel  # noqa: E402
from ruv_resources.capture.windows import make_windows  # noqa: E402

pytestmark = pytest.mark.reference
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


class Info:
    num_layers = 2


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    base = transformers.LlamaForCausalLM(config).eval()
    teacher = copy.deepcopy(base)
    with torch.no_grad():
        for layer in teacher.model.layers:
            for module in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
                module.weight += 0.05 * torch.randn(module.out_features, 2) @ torch.randn(2, module.in_features)
    return LoadedModel(base, None, Info()), LoadedModel(teacher, None, Info())


def windows(n=6, length=12, seed=0):
    body = np.random.default_rng(seed).integers(2, 50, size=(n, length))
    return make_windows(body, bos=1, prefix=[], heldout_fraction=0.34, seed=seed)


def test_statistics_equal_what_hooks_record():
    base, teacher = tiny_pair()
    w = windows()
    seen = {}
    hooks = [getattr(layer.self_attn if m != "down_proj" else layer.mlp, m).register_forward_hook(
        lambda mod, args, out, key=f"layers.{i}.{m}": seen.__setitem__(key, (args[0].detach(), out.detach())))
        for i, layer in enumerate(teacher.model.model.layers) for m in TARGETS]
    with torch.no_grad():
        teacher.model(torch.as_tensor(w.teacher[w.train]))
    for h in hooks:
        h.remove()
    for stats in capture_statistics(teacher, base, w, TARGETS, batch=2):
        for module in TARGETS:
            key = f"layers.{stats.layer}.{module}"
            X, Y = (t.reshape(-1, t.shape[-1]).double().numpy() for t in seen[key])
            W0 = base.linear(stats.layer, module).weight.double().numpy()
            R = Y - X @ W0.T
            kind = {"down_proj": "mlp_act", "o_proj": "attn_out"}.get(module, "hidden")
            np.testing.assert_allclose(stats.gram["train"][kind], X.T @ X, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(stats.cross["train"][key], X.T @ R, rtol=1e-3, atol=1e-4)
            assert stats.rr["train"][key] == pytest.approx(float(np.sum(R * R)), rel=1e-3)
            assert stats.n["train"] == X.shape[0]


def test_teacher_forced_fit_recovers_a_rank2_delta():
    base, teacher = tiny_pair(1)
    w = windows(n=12, length=16, seed=1)
    spec = AdapterSpec(2, 2.0, TARGETS, 16, 24, 2, q_size=16, kv_size=8)
    for stats in capture_statistics(teacher, base, w, TARGETS):
        for key, solution in fit_layer(stats, spec, ridge_rel=1e-9).items():
            layer, module = stats.layer, key.split(".")[2]
            true = (teacher.linear(layer, module).weight - base.linear(layer, module).weight).double().numpy()
            np.testing.assert_allclose(solution.delta(), true, atol=2e-4)


def test_sequential_fit_moves_the_student_toward_the_teacher():
    base, teacher = tiny_pair(2)
    w = windows(n=12, length=16, seed=2)
    spec = AdapterSpec(2, 2.0, TARGETS, 16, 24, 2, q_size=16, kv_size=8)
    adapter = fit_sequential(base, teacher, w, spec, ridge_rel=1e-6, sink=False)
    student = copy.deepcopy(base.model)
    with torch.no_grad():
        for key in adapter.keys():
            layer, module = int(key.split(".")[1]), key.split(".")[2]
            block = student.model.layers[layer]
            getattr(block.self_attn if module != "down_proj" else block.mlp, module).weight += torch.from_numpy(adapter.delta(key))
        ids = torch.as_tensor(w.student[w.train])
        t, b, s = teacher.model(ids).logits, base.model(ids).logits, student(ids).logits
    assert float((s - t).abs().mean()) < 0.1 * float((b - t).abs().mean())
