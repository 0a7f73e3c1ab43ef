"""Judging an adapter on the model itself: loaded by PEFT onto the real base model, on held-out
windows (never trained on), against the teacher's next-token distributions.

Per aligned text position (student column j predicts the window's token j, as teacher column
`offset - 1 + j` does): `teacher_kl_base` = mean KL(teacher || base), `teacher_kl` = mean
KL(teacher || base + adapter), `teacher_top1` = how often the adapted model's top token is the
teacher's, `perplexity` of the adapted model on the window's own tokens (and the base's).
"""

from __future__ import annotations

import copy
import os

import numpy as np

from ruv_resources.capture.windows import Windows


def judge_adapter(base, teacher, windows: Windows, adapter_dir: str | os.PathLike | None, *, batch: int = 4) -> dict:
    """Scores on `windows.heldout`; `adapter_dir` None scores the base model alone."""
    import torch

    rows = windows.heldout
    T, P = windows.window, windows.offset
    model = copy.deepcopy(base.model)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        missing = _missing_lora_keys(model, adapter_dir)
        if missing:
            raise ValueError(f"PEFT loaded {adapter_dir} with {len(missing)} LoRA weights missing (e.g. {missing[0]})")
    model.eval()
    totals = {"kl": 0.0, "kl_base": 0.0, "top1": 0.0, "top1_base": 0.0, "nll": 0.0, "nll_base": 0.0, "n": 0}
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            t_logp = torch.log_softmax(teacher.model(torch.as_tensor(windows.teacher[part])).logits[:, P - 1:P - 1 + T], -1)
            s_ids = torch.as_tensor(windows.student[part])
            a_logp = torch.log_softmax(model(s_ids).logits[:, :T], -1)
            b_logp = torch.log_softmax(base.model(s_ids).logits[:, :T], -1)
            p_t = t_logp.exp()
            nxt = s_ids[:, 1:1 + T].unsqueeze(-1)
            totals["kl"] += float((p_t * (t_logp - a_logp)).sum())
            totals["kl_base"] += float((p_t * (t_logp - b_logp)).sum())
            top = t_logp.argmax(-1)
            totals["top1"] += float((a_logp.argmax(-1) == top).sum())
            totals["top1_base"] += float((b_logp.argmax(-1) == top).sum())
            totals["nll"] -= float(a_logp.gather(-1, nxt).sum())
            totals["nll_base"] -= float(b_logp.gather(-1, nxt).sum())
            totals["n"] += int(part.shape[0] * T)
    n = max(1, totals["n"])
    kl, kl_base = totals["kl"] / n, totals["kl_base"] / n
    return {
        "teacher_kl_base": kl_base,
        "teacher_kl": kl,
        "kl_removed": (1.0 - kl / kl_base) if kl_base > 0 else 0.0,
        "teacher_top1": totals["top1"] / n,
        "teacher_top1_base": totals["top1_base"] / n,
        "perplexity": float(np.exp(totals["nll"] / n)),
        "perplexity_base": float(np.exp(totals["nll_base"] / n)),
        "heldout_tokens": totals["n"],
    }


def _missing_lora_keys(model, adapter_dir) -> list[str]:
    """LoRA tensors in the file that PEFT did not put into the model (a silent partial load)."""
    from safetensors.numpy import load_file

    from ruv_resources.peft_format import WEIGHTS_NAME

    saved = load_file(os.path.join(str(adapter_dir), WEIGHTS_NAME))
    state = model.state_dict()
    names = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.") for k in state}
    return sorted(k for k in saved if k not in names)
