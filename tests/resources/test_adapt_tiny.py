"""Adapting to traffic on a tiny random Llama (no download): request sequences line the teacher's
and the student's positions up and weigh only real tokens, an update lowers the KL it trains on,
corrections count through their own tokens, and the guard's verdict follows its two rules. Fast
stand-ins for the SmolLM2 test (tests/realmodel/test_adapt_on_smollm2.py)."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ruv_kernels.adapter import AdapterSpec, LoraAdapter  # noqa: E402
from ruv_resources.capture.adapt import (  # noqa: E402
    Sequences, Verdict, adapt_adapter, corpus_sequences, is_heldout, judge_update, mean_kls, peft_model, request_sequences,
)
from ruv_resources.capture.models import LoadedModel  # noqa: E402
from ruv_resources.capture.windows import make_windows  # noqa: E402
from ruv_resources.traffic_log import Record  # noqa: E402

pytestmark = pytest.mark.reference


class CharTokenizer:
    bos_token_id, eos_token_id = 1, 0

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[2 + ord(c) % 46 for c in text])


class Info:
    num_layers = 2


def tiny():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    base = LoadedModel(transformers.LlamaForCausalLM(config).eval(), CharTokenizer(), Info())
    teacher_model = copy.deepcopy(base.model)
    with torch.no_grad():
        for layer in teacher_model.model.layers:
            layer.self_attn.q_proj.weight += 0.3 * torch.randn_like(layer.self_attn.q_proj.weight)
            layer.self_attn.v_proj.weight += 0.3 * torch.randn_like(layer.self_attn.v_proj.weight)
    teacher = LoadedModel(teacher_model, base.tokenizer, base.info)
    spec = AdapterSpec(rank=2, alpha=4.0, targets=("q_proj", "v_proj"), num_layers=2, hidden_size=16, intermediate_size=24,
                       q_size=16, kv_size=8)
    rng = np.random.default_rng(0)
    keys = [f"layers.{i}.{m}" for i in range(2) for m in spec.targets]
    A = {k: rng.normal(0, 0.1, (2, spec.shape_of(k)[0])).astype(np.float32) for k in keys}
    B = {k: np.zeros((spec.shape_of(k)[1], 2), np.float32) for k in keys}
    start = LoraAdapter(spec, A, B)  # PEFT's initialisation: B = 0, the base model itself
    return base, teacher, start


def test_request_sequences_align_and_weigh_real_tokens():
    base, _, _ = tiny()
    records = [Record(prompt="abc", answer="de", quality=0.5), Record(prompt="xyzxyzxyzxyz"),
               Record(prompt="pq", correction="rs", quality=1.0)]
    seqs = request_sequences(base, [7, 8], records, length=8)
    assert len(seqs) == 4 and seqs.offset == 3  # one more sequence for the correction
    first = base.encode("abc") + base.encode("\n") + base.encode("de")  # 6 tokens
    assert list(seqs.student[0, 1:7]) == first and seqs.student[0, 0] == 1
    assert list(seqs.teacher[0, :3]) == [1, 7, 8] and list(seqs.teacher[0, 3:9]) == first
    assert list(seqs.weight[0]) == [0.5] * 6 + [0, 0] and seqs.real[0].sum() == 6
    assert seqs.real[1].all() and list(seqs.student[1, 1:]) == base.encode("xyzxyzxyzxyz")[-8:]  # the prompt's end
    assert seqs.ce[:3].sum() == 0
    assert list(seqs.ce[3]) == [0, 0, 0, 1, 1, 0, 0, 0]  # "pq" "\n" then the correction "rs"
    assert list(seqs.answer[0]) == [0, 0, 0, 0, 1, 1, 0, 0]  # "abc" "\n" then the answer "de"
    assert not seqs.answer[1].any() and list(seqs.answer[3]) == list(seqs.ce[3] > 0)
    # teacher column offset - 1 + j and student column j both predict text token j
    j = 2
    assert seqs.teacher[0, seqs.offset + j] == seqs.student[0, 1 + j]


def test_an_update_lowers_the_kl_it_trains_on_and_replay_mixes_in():
    base, teacher, start = tiny()
    records = [Record(prompt="".join(chr(97 + (i * k) % 26) for k in range(10))) for i in range(12)]
    seqs = request_sequences(base, [], records, length=10)
    before = peft_model(base, start, trainable=False)
    windows = make_windows(np.random.default_rng(1).integers(2, 48, (6, 10)), bos=1, prefix=[], heldout_fraction=0.34, seed=0)
    replay = corpus_sequences(windows, windows.train)
    adapted, figures = adapt_adapter(base, teacher, start, seqs, replay, epochs=8, lr=2e-2, batch=4, correction_weight=0.0, seed=0)
    after = peft_model(base, adapted, trainable=False)
    kl_before, kl_after = mean_kls([before, after], teacher, seqs)
    assert kl_after < 0.8 * kl_before, (kl_before, kl_after)
    assert figures["adapt_sequences"] == [12, len(windows.train)]
    assert adapted.spec == start.spec and adapted.is_finite()


def test_a_correction_pulls_the_student_to_its_tokens():
    base, teacher, start = tiny()
    records = [Record(prompt="review", correction="zzzz", quality=1.0)]
    seqs = request_sequences(base, [], records, length=11)
    correction = seqs.take([1])
    z = base.encode("z")[0]

    def p_z(adapter):
        with torch.no_grad():
            logits = peft_model(base, adapter, trainable=False)(torch.as_tensor(correction.student)).logits[0, 7:10]
        return float(torch.softmax(logits, -1)[:, z].mean())

    pulled, _ = adapt_adapter(base, teacher, start, seqs, None, epochs=20, lr=3e-2, batch=2, correction_weight=5.0, seed=0)
    kl_only, _ = adapt_adapter(base, teacher, start, seqs, None, epochs=20, lr=3e-2, batch=2, correction_weight=0.0, seed=0)
    # measured: 0.021 at the start, 0.0205 after the KL alone, 0.0276 with the correction's cross-entropy
    assert p_z(pulled) > 1.2 * max(p_z(start), p_z(kl_only))


def test_the_guard_needs_both_rules():
    assert Verdict(0.5, 0.4, 1.0, 1.05, 0.1).passed
    assert not Verdict(0.5, 0.5, 1.0, 1.0, 0.1).passed  # no better on traffic
    assert not Verdict(0.5, 0.4, 1.0, 1.11, 0.1).passed  # forgot the corpus
    assert Verdict(0.5, 0.4, 1.0, 1.11, 0.1).figures()["corpus_kl_rise"] == pytest.approx(0.11)
    # the corpus rule is anchored to the role as first fitted: rises cannot add up over updates
    assert not Verdict(0.5, 0.4, 1.05, 1.12, 0.1, corpus_kl_frozen=1.0).passed
    assert Verdict(0.5, 0.4, 1.05, 1.09, 0.1, corpus_kl_frozen=1.0).passed
    # better over the whole requests but worse on what the role says: refused
    assert not Verdict(0.5, 0.4, 1.0, 1.0, 0.1, answer_kl_live=0.3, answer_kl_new=0.35).passed
    assert Verdict(0.5, 0.4, 1.0, 1.0, 0.1, answer_kl_live=0.3, answer_kl_new=0.29).passed


def test_judging_the_same_adapter_twice_gives_equal_figures():
    base, teacher, start = tiny()
    seqs = request_sequences(base, [], [Record(prompt="hello world"), Record(prompt="abc")], length=12)
    windows = make_windows(np.random.default_rng(1).integers(2, 48, (4, 12)), bos=1, prefix=[], heldout_fraction=0.5, seed=0)
    verdict = judge_update(base, teacher, start, start, seqs, corpus_sequences(windows, windows.heldout), margin=0.1)
    assert verdict.traffic_kl_live == pytest.approx(verdict.traffic_kl_new) and not verdict.improves_traffic
    assert verdict.keeps_corpus


def test_a_fixed_fifth_is_held_out():
    import uuid

    rng = np.random.default_rng(0)
    ids = [uuid.UUID(bytes=rng.bytes(16)).hex for _ in range(2000)]
    share = np.mean([is_heldout(i) for i in ids])
    assert 0.15 < share < 0.25
    assert all(is_heldout(i) == is_heldout(i) for i in ids[:10])


def test_a_long_prompt_loses_its_start_and_keeps_the_answer():
    base, _, _ = tiny()
    record = Record(prompt="p" * 30, answer="a" * 20, correction="c" * 3)
    seqs = request_sequences(base, [], [record], length=16)
    a, c, p, nl = (base.encode(x)[0] for x in "acp\n")
    # the newline and the answer cut to half the length, after the prompt's last 8 tokens
    assert list(seqs.student[0, 1:]) == [p] * 8 + [nl] + [a] * 7
    correction = list(seqs.student[1, 1:])
    assert correction[-3:] == [c] * 3 and seqs.real[1].all()
    assert list(seqs.ce[1]) == [0] * 13 + [1] * 3


def test_sequences_of_different_lengths_are_not_mixed():
    base, _, _ = tiny()
    a = request_sequences(base, [], [Record(prompt="ab")], length=4)
    b = request_sequences(base, [], [Record(prompt="ab")], length=5)
    with pytest.raises(ValueError, match="different prefixes or lengths"):
        Sequences.concat([a, b])
