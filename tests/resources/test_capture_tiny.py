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


def test_v_proj_change_is_linear_in_the_attention_mixed_inputs():
    """What `attention_mix` assumes: with q/k fixed, changing v_proj by D moves head h's attention
    output at position i by D_g z_i^h, z^h = P^h x (P the causal attention weights)."""
    from ruv_resources.capture.attention_mix import attention_probs, grouped_statistics
    from ruv_resources.capture.layerwise import LayerRunner

    base, _ = tiny_pair(3)
    w = windows(n=4, length=10, seed=3)
    runner = LayerRunner(base.model)
    block = base.model.model.layers[1]
    with torch.no_grad():
        h = runner.embed(w.student)
        rope = runner.rope(h)
        x = block.input_layernorm(h)
        before = runner.attention(1, h, rope).inner
        probs, rep, head_dim = attention_probs(block, x, rope)
        assert probs.shape == (4, 4, 11, 11) and rep == 2 and head_dim == 4
        D = 0.3 * torch.randn(8, 16)
        block.self_attn.v_proj.weight += D
        change = runner.attention(1, h, rope).inner - before
        block.self_attn.v_proj.weight -= D
    for head in range(4):
        group = head // rep
        z = probs[:, head] @ x
        expected = z @ D[group * head_dim:(group + 1) * head_dim].T
        np.testing.assert_allclose(change[..., head * head_dim:(head + 1) * head_dim].numpy(), expected.numpy(), atol=1e-5)
    # the statistics are those of the mixed rows: with target = the change, C_g = G_g D_g^T
    grams, crosses = grouped_statistics(probs, x, change[:, 1:], slice(1, 11), rep, head_dim, 0.0)
    for group in range(2):
        D_g = D[group * head_dim:(group + 1) * head_dim].double().numpy()
        np.testing.assert_allclose(crosses[group], grams[group] @ D_g.T, rtol=1e-3, atol=1e-4)


def test_refinement_lowers_the_selection_kl_and_keeps_every_module():
    """KL descent through PEFT from the closed-form fit: the kept epoch's selection KL is the
    lowest seen (epoch 0, the closed form, included); the held-out windows are not read."""
    from ruv_resources.capture.refine import refine_adapter, split_for_selection

    base, teacher = tiny_pair(4)
    w = windows(n=15, length=12, seed=4)
    spec = AdapterSpec(1, 2.0, TARGETS, 16, 24, 2, q_size=16, kv_size=8)  # rank 1 for a rank-2 teacher: a gap is left
    fitted = fit_sequential(base, teacher, w, spec, ridge_rel=1e-2, sink=False)
    poisoned = copy.deepcopy(w)
    poisoned.student[w.heldout] = 0  # if refinement read these, the result would change
    poisoned.teacher[w.heldout] = 0
    refined, info = refine_adapter(base, teacher, w, fitted, epochs=4, lr=3e-3, batch=4, seed=0)
    again, _ = refine_adapter(base, teacher, poisoned, fitted, epochs=4, lr=3e-3, batch=4, seed=0)
    history = [float(v) for v in info["refine_selection_kl"].split(", ")]
    assert len(history) == 5 and history[info["refine_kept_epoch"]] == min(history)
    assert min(history) < history[0]  # four epochs of KL descent do better than the greedy fit
    assert set(refined.A) == set(fitted.A) and refined.spec == fitted.spec
    for key in refined.A:
        np.testing.assert_array_equal(refined.A[key], again.A[key])
    fit_rows, select_rows = split_for_selection(w.train, 0)
    assert set(fit_rows) | set(select_rows) == set(w.train) and not set(fit_rows) & set(select_rows)
    unchanged, info0 = refine_adapter(base, teacher, w, fitted, epochs=0, lr=3e-3, batch=4, seed=0)
    assert unchanged is fitted and info0["refine_epochs"] == 0
