"""Adapting a live role adapter to its traffic: a few steps of KL descent on new requests, with a
replay share of the corpus it was fitted on, and the guard that decides whether the result is
published.

Each request is read as the role's teacher reads a text (`[BOS] + prefix + text`, the prefix a
system prompt and a blank line, or empty for a weight teacher) and as the student reads it
(`[BOS] + text`), its text being the prompt and the answer the server gave. The loss is the
teacher's KL on every position, weighted by the request's quality (1 where none was given); a
corrected answer adds a second sequence (prompt and correction) on which, besides the KL, the
student's cross-entropy on the correction's tokens counts (`correction_weight`): what a person
said the answer should be. Sequences are right-padded to one length; a causal model's real
positions never see the padding, and padded positions carry no weight.

Forgetting: the original corpus's training windows are mixed in (`replay` per new sequence, KL
only), so the update is pulled back to what the role was fitted on. The guard then compares the
candidate with the live adapter on held-out traffic (requests never trained on) and on the corpus's
held-out windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ruv_kernels.adapter import LoraAdapter
from ruv_resources.capture.refine import _our_key, peft_model
from ruv_resources.capture.windows import Windows

Progress = Callable[[str], None]
TEACHER_CACHE_BYTES = 2 * 1024**3
HELDOUT_EVERY = 5  # a request whose id hashes to 0 mod 5 is held out, for every update, for good


def is_heldout(record_id: str) -> bool:
    """A fixed fifth of the requests, chosen by id, is never trained on (the guard's data)."""
    return int(record_id[:8], 16) % HELDOUT_EVERY == 0


@dataclass
class Sequences:
    """Right-padded sequences: `student [N, 1+L]`, `teacher [N, P+L]` (teacher column
    `offset - 1 + j` and student column `j` both predict text token `j`), `weight [N, L]` on
    each position's KL, `ce [N, L]` on its cross-entropy (the corrections), `real [N, L]` where
    the text has a token (not padding), `answer [N, L]` where it is an answer or a correction
    (what the role said, or should have said)."""

    student: np.ndarray
    teacher: np.ndarray
    offset: int
    weight: np.ndarray
    ce: np.ndarray
    real: np.ndarray
    answer: np.ndarray

    def __len__(self) -> int:
        return int(self.student.shape[0])

    @property
    def length(self) -> int:
        return int(self.student.shape[1] - 1)

    def take(self, rows) -> "Sequences":
        rows = np.asarray(rows, dtype=np.int64)
        return Sequences(self.student[rows], self.teacher[rows], self.offset, self.weight[rows], self.ce[rows], self.real[rows],
                         self.answer[rows])

    @staticmethod
    def concat(parts: list["Sequences"]) -> "Sequences":
        parts = [p for p in parts if len(p)]
        if len({p.offset for p in parts}) != 1 or len({p.length for p in parts}) != 1:
            raise ValueError("sequences of different prefixes or lengths cannot be trained together")
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("student", "teacher", "weight", "ce", "real", "answer")}
        return Sequences(offset=parts[0].offset, **joined)


def request_sequences(base, prefix: list[int], records, length: int, *, with_corrections: bool = True) -> Sequences:
    """The traffic `records` as sequences of `length` text tokens: one per request (prompt and
    answer), one more per correction. An answer or correction keeps at most half the length and a
    long prompt loses its start, so what the role said (or should have said) is always in the
    sequence, with the end of the prompt it answers; shorter sequences are padded."""
    rows, weights, ces, answers = [], [], [], []
    newline = base.encode("\n")
    for record in records:
        quality = 1.0 if record.quality is None else float(record.quality)
        prompt = base.encode(record.prompt)
        tokens, start = _fit(prompt, newline + base.encode(record.answer) if record.answer else [], length)
        rows.append(tokens); weights.append(quality); ces.append(None)
        answers.append(start + len(newline) if record.answer else None)
        if with_corrections and record.correction:
            tokens, start = _fit(prompt, newline + base.encode(record.correction), length)
            rows.append(tokens); weights.append(quality); ces.append(start + len(newline)); answers.append(start + len(newline))
    return _pack(base, prefix, rows, weights, ces, answers, length)


def _fit(prompt: list[int], tail: list[int], length: int) -> tuple[list[int], int]:
    """`(tokens, where the tail starts)`: the tail cut to half of `length`, the prompt's end before it."""
    tail = tail[: length // 2] if len(prompt) + len(tail) > length else tail
    keep = min(len(prompt), length - len(tail))
    return prompt[len(prompt) - keep:] + tail, keep


def corpus_sequences(windows: Windows, rows, weight: float = 1.0) -> Sequences:
    """Windows of the captured corpus (already of one length) as sequences, KL only."""
    rows = np.asarray(rows, dtype=np.int64)
    n, T = len(rows), windows.window
    return Sequences(windows.student[rows], windows.teacher[rows], windows.offset, np.full((n, T), weight, np.float32),
                     np.zeros((n, T), np.float32), np.ones((n, T), bool), np.zeros((n, T), bool))


def _pack(base, prefix, rows, weights, ces, answers, length) -> Sequences:
    n, P = len(rows), 1 + len(prefix)
    pad = base.tokenizer.eos_token_id if base.tokenizer.eos_token_id is not None else 0
    student = np.full((n, 1 + length), pad, np.int64)
    teacher = np.full((n, P + length), pad, np.int64)
    weight = np.zeros((n, length), np.float32)
    ce = np.zeros((n, length), np.float32)
    real = np.zeros((n, length), bool)
    answer = np.zeros((n, length), bool)
    student[:, 0] = base.bos_id
    teacher[:, :P] = [base.bos_id] + list(prefix)
    for i, (tokens, w, start, said) in enumerate(zip(rows, weights, ces, answers)):
        k = len(tokens)
        student[i, 1:1 + k] = tokens
        teacher[i, P:P + k] = tokens
        weight[i, :k] = w
        real[i, :k] = True
        if start is not None and start < k:
            ce[i, start:k] = 1.0
        if said is not None and said < k:
            answer[i, said:k] = True
    return Sequences(student, teacher, P, weight, ce, real, answer)


def _kl_terms(torch, teacher_logits, student_logits):
    t = torch.log_softmax(teacher_logits, -1)
    s = torch.log_softmax(student_logits, -1)
    return (t.exp() * (t - s)).sum(-1), s


def teacher_logits(torch, teacher, seqs: Sequences, rows):
    with torch.no_grad():
        L, P = seqs.length, seqs.offset
        return teacher.model(torch.as_tensor(seqs.teacher[rows])).logits[:, P - 1:P - 1 + L]


def mean_kls(models, teacher, seqs: Sequences, *, batch: int = 8) -> list[float]:
    """Mean KL(teacher || model) of each model over the real (not padding) positions, every token
    counting once whatever its weight. The teacher runs once per batch."""
    return [kl for kl, _ in guard_kls(models, teacher, seqs, batch=batch)]


def guard_kls(models, teacher, seqs: Sequences, *, batch: int = 8) -> list[tuple[float, float | None]]:
    """Per model: `(mean KL over every real position, mean KL over the answer and correction
    positions, None when there are none)`: the guard's measures."""
    import torch

    totals, count = [0.0] * len(models), 0.0
    said, said_count = [0.0] * len(models), 0.0
    for model in models:
        model.eval()
    with torch.no_grad():
        for start in range(0, len(seqs), batch):
            rows = np.arange(start, min(len(seqs), start + batch))
            target = teacher_logits(torch, teacher, seqs, rows)
            real = torch.as_tensor(seqs.real[rows], dtype=target.dtype)
            answer = torch.as_tensor(seqs.answer[rows], dtype=target.dtype)
            student = torch.as_tensor(seqs.student[rows])
            for i, model in enumerate(models):
                kl, _ = _kl_terms(torch, target, model(student).logits[:, :seqs.length])
                totals[i] += float((kl * real).sum())
                said[i] += float((kl * answer).sum())
            count += float(real.sum())
            said_count += float(answer.sum())
    return [(t / max(count, 1.0), a / said_count if said_count else None) for t, a in zip(totals, said)]


def adapt_adapter(base, teacher, adapter: LoraAdapter, train: Sequences, replay: Sequences | None, *, epochs: int,
                  lr: float, batch: int, correction_weight: float, seed: int,
                  progress: Progress | None = None) -> tuple[LoraAdapter, dict]:
    """`adapter` after `epochs` passes of AdamW over the new sequences (and the replay share)."""
    import torch

    rng = np.random.default_rng(seed)
    data = Sequences.concat([train] + ([replay] if replay is not None and len(replay) else []))
    data = data.take(rng.permutation(len(data)))  # every mini-batch mixes new requests and replay
    started = time.perf_counter()
    model = peft_model(base, adapter, trainable=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimiser = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    n_batches = (len(data) + batch - 1) // batch
    vocab = int(base.model.config.vocab_size)
    # the teacher's logits once per sequence, when they fit in TEACHER_CACHE_BYTES (else once per epoch)
    cache = epochs > 1 and len(data) * data.length * vocab * 4 <= TEACHER_CACHE_BYTES
    cached = [teacher_logits(torch, teacher, data, np.arange(b * batch, min(len(data), (b + 1) * batch)))
              for b in range(n_batches)] if cache else None
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for b in rng.permutation(n_batches):
            rows = np.arange(b * batch, min(len(data), (b + 1) * batch))
            target = cached[b] if cached else teacher_logits(torch, teacher, data, rows)
            kl, s_logp = _kl_terms(torch, target, model(torch.as_tensor(data.student[rows])).logits[:, :data.length])
            w = torch.as_tensor(data.weight[rows])
            ce_w = torch.as_tensor(data.ce[rows])
            loss = (kl * w).sum()
            if ce_w.any():
                nxt = torch.as_tensor(data.student[rows][:, 1:1 + data.length]).unsqueeze(-1)
                loss = loss - correction_weight * (s_logp.gather(-1, nxt).squeeze(-1) * ce_w * w).sum()
            loss = loss / torch.clamp(w.sum(), min=1.0)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        losses.append(total)
        if progress:
            progress(f"adapted epoch {epoch + 1}/{epochs}: loss {total:.4f} ({time.perf_counter() - started:.1f} s)")
    A, B = {}, {}
    for name, value in params.items():
        key, factor = _our_key(name)
        (A if factor == "lora_A" else B)[key] = value.detach().numpy().astype(np.float32)
    return LoraAdapter(adapter.spec, A, B), {"adapt_seconds": round(time.perf_counter() - started, 2),
                                              "adapt_sequences": [int(len(train)), int(len(data) - len(train))],
                                              "adapt_losses": ", ".join(f"{v:.5g}" for v in losses)}


@dataclass
class Verdict:
    """The guard: on held-out traffic the candidate's KL to the teacher is below the live
    adapter's, over every position and not above it on the answers and corrections alone (where
    the held-out traffic has any: what the role says is where a bad update shows, and a few
    answer tokens in a long request would otherwise drown); on the corpus's held-out windows at
    most `margin` above the role as first fitted (`corpus_kl_frozen`; the live adapter's until an
    update was published), so small rises cannot add up over many updates."""

    traffic_kl_live: float
    traffic_kl_new: float
    corpus_kl_live: float
    corpus_kl_new: float
    margin: float
    answer_kl_live: float | None = None
    answer_kl_new: float | None = None
    frozen_traffic_kl: float | None = None  # the role as first fitted, on the same held-out traffic
    corpus_kl_frozen: float | None = None  # and on the corpus's held-out windows

    @property
    def improves_traffic(self) -> bool:
        answers_ok = self.answer_kl_live is None or self.answer_kl_new <= self.answer_kl_live
        return self.traffic_kl_new < self.traffic_kl_live and answers_ok

    @property
    def corpus_reference(self) -> float:
        return self.corpus_kl_frozen if self.corpus_kl_frozen is not None else self.corpus_kl_live

    @property
    def keeps_corpus(self) -> bool:
        return self.corpus_kl_new <= (1.0 + self.margin) * self.corpus_reference

    @property
    def passed(self) -> bool:
        return self.improves_traffic and self.keeps_corpus

    def figures(self) -> dict:
        return {"heldout_traffic_kl_live": self.traffic_kl_live, "heldout_traffic_kl": self.traffic_kl_new,
                **({"heldout_traffic_kl_frozen": self.frozen_traffic_kl} if self.frozen_traffic_kl is not None else {}),
                "corpus_kl_live": self.corpus_kl_live, "corpus_kl": self.corpus_kl_new,
                "corpus_kl_frozen": self.corpus_reference,
                "corpus_kl_rise": self.corpus_kl_new / self.corpus_reference - 1.0 if self.corpus_reference > 0 else 0.0,
                "corpus_margin": self.margin,
                **({"heldout_answer_kl_live": self.answer_kl_live, "heldout_answer_kl": self.answer_kl_new}
                   if self.answer_kl_live is not None else {})}


def judge_update(base, teacher, live: LoraAdapter, candidate: LoraAdapter, heldout_traffic: Sequences,
                 heldout_corpus: Sequences, *, margin: float, batch: int = 8,
                 frozen: LoraAdapter | None = None) -> Verdict:
    """Both adapters on held-out traffic and on the corpus's held-out windows; with `frozen` (the
    role as first fitted, when it is not the live one), that one's held-out traffic KL too, for
    the curve on the asset page."""
    models = [peft_model(base, adapter, trainable=False) for adapter in (live, candidate)]
    extra = [peft_model(base, frozen, trainable=False)] if frozen is not None else []
    figures = guard_kls(models + extra, teacher, heldout_traffic, batch=batch)
    (t_live, a_live), (t_new, a_new) = figures[:2]
    corpus = mean_kls(models + extra, teacher, heldout_corpus, batch=batch)
    verdict = Verdict(t_live, t_new, corpus[0], corpus[1], margin, a_live, a_new)
    verdict.frozen_traffic_kl = figures[2][0] if extra else t_live
    verdict.corpus_kl_frozen = corpus[2] if extra else corpus[0]
    return verdict
