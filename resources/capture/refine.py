"""End-to-end refinement of a sequentially fitted adapter: a few epochs on the real objective.

Sequential fitting is greedy: each module is solved in closed form against the teacher at its
own layer, and what one layer cannot close compounds through the later ones. Starting from
that fit, a few epochs of AdamW on the mean per-token KL(teacher || base + adapter) itself, with
the adapter loaded by PEFT onto the base model (its dropout applies as PEFT applies it), close
part of the rest. A fifth of the training windows is kept aside for model selection: the
adapter of the epoch with the lowest KL there is kept, the closed-form fit included (epoch 0),
so refinement never makes that KL worse. The held-out windows the adapter is judged on are
never read here.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable

import numpy as np

from ruv_kernels.adapter import LoraAdapter
from ruv_resources.capture.windows import Windows

Progress = Callable[[str], None]


def split_for_selection(train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(fit, select)`: a seeded fifth of the training windows (at least one) for selection."""
    order = np.random.default_rng(seed).permutation(np.asarray(train))
    n_select = max(1, len(order) // 5)
    return np.sort(order[n_select:]), np.sort(order[:n_select])


def _kl(torch, teacher_logits, student_logits):
    t = torch.log_softmax(teacher_logits, -1)
    return (t.exp() * (t - torch.log_softmax(student_logits, -1))).sum(-1)


def refine_adapter(base, teacher, windows: Windows, adapter: LoraAdapter, *, epochs: int, lr: float, batch: int,
                   seed: int, progress: Progress | None = None) -> tuple[LoraAdapter, dict]:
    """The adapter after up to `epochs` epochs of KL descent, and what happened (per-epoch
    selection KL, the epoch kept, seconds)."""
    import torch

    fit_rows, select_rows = split_for_selection(windows.train, seed)
    T, P = windows.window, windows.offset
    started = time.perf_counter()
    if epochs < 1 or len(fit_rows) < 1:
        return adapter, {"refine_epochs": 0, "refine_kept_epoch": 0}
    model = peft_model(base, adapter, trainable=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def teacher_logits(rows):
        with torch.no_grad():
            return teacher.model(torch.as_tensor(windows.teacher[rows])).logits[:, P - 1:P - 1 + T]

    def selection_kl() -> float:
        model.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(select_rows), batch):
                rows = select_rows[start:start + batch]
                total += float(_kl(torch, teacher_logits(rows), model(torch.as_tensor(windows.student[rows])).logits[:, :T]).sum())
        model.train()
        return total / (len(select_rows) * T)

    torch.manual_seed(seed)
    history = [selection_kl()]
    best = {n: p.detach().clone() for n, p in params.items()}
    kept = 0
    optimiser = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(fit_rows)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            target = teacher_logits(rows)
            loss = _kl(torch, target, model(torch.as_tensor(windows.student[rows])).logits[:, :T]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        history.append(selection_kl())
        if history[-1] < history[kept]:
            kept = epoch
            best = {n: p.detach().clone() for n, p in params.items()}
        if progress:
            progress(f"refined epoch {epoch}/{epochs}: selection KL {history[-1]:.4f} "
                     f"(closed form {history[0]:.4f}; {time.perf_counter() - started:.0f} s)")
    A, B = {}, {}
    for name, value in best.items():
        key, factor = _our_key(name)
        (A if factor == "lora_A" else B)[key] = value.numpy().astype(np.float32)
    missing = set(adapter.A) ^ set(A) or set(adapter.B) ^ set(B)
    if missing:
        raise RuntimeError(f"refinement lost or gained modules: {sorted(missing)[:3]}")
    return LoraAdapter(adapter.spec, A, B), {
        "refine_epochs": epochs, "refine_kept_epoch": kept, "refine_selection_kl": ", ".join(f"{v:.6g}" for v in history),
        "refine_seconds": round(time.perf_counter() - started, 2), "refine_windows": [int(len(fit_rows)), int(len(select_rows))],
    }


def peft_model(base, adapter: LoraAdapter, *, trainable: bool):
    """`adapter` loaded by PEFT onto a copy of the base model."""
    from peft import PeftModel

    from ruv_resources.peft_format import save_adapter

    with tempfile.TemporaryDirectory() as scratch:
        save_adapter(adapter, scratch)
        return PeftModel.from_pretrained(copy.deepcopy(base.model), scratch, is_trainable=trainable)


def _our_key(name: str) -> tuple[str, str]:
    """`...layers.3.self_attn.q_proj.lora_A.default.weight` -> (`layers.3.q_proj`, `lora_A`)."""
    parts = name.split(".")
    i = parts.index("layers")
    factor = next(p for p in parts if p in ("lora_A", "lora_B"))
    module = parts[parts.index(factor) - 1]
    return f"layers.{parts[i + 1]}.{module}", factor
