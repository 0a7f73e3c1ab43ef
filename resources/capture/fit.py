"""Capture and fit: the two ways of turning a teacher into per-module least-squares problems.

- Teacher-forced (`capture_statistics`): X is what the teacher's own target modules read, and
  `R = Y_teacher - X @ W0^T`. For a teacher that differs from the base by a delta on the target
  modules this is exact. Only sufficient statistics are kept, one layer at a time: the Gram
  `G = X^T X` per (layer, input) and `C = X^T R`, `sum ||r||^2`, `n` per module and split, so memory
  is fixed by the model's shapes, not by the number of tokens. Since `R = X (W_t - W0)^T` for a
  linear module, `C = G (W_t - W0)^T` and `sum ||r||^2 = tr((W_t - W0) G (W_t - W0)^T)` exactly.
- Sequential (`fit_sequential`): X is what the *student* reads with the already-fitted earlier
  modules applied, layer by layer and module by module (as GPTQ / llm-compressor propagate). Needed
  when the teacher differs by its context (a system prompt). The student's first position (the
  attention sink) is added to each fit with a zero target, so it is left as it is; `o_proj` and
  `down_proj` target the teacher's residual stream, closing the gap the earlier layers left;
  `v_proj` is fitted through the student's attention against the same gap (`attention_mix`), so
  an adapter without o_proj or down_proj can close it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ruv_kernels.adapter import AdapterSpec, LoraAdapter
from ruv_kernels.exact import accumulate_cross, accumulate_gram, solve_grouped_reduced_rank, solve_reduced_rank
from ruv_kernels.modules import INPUT_KIND
from ruv_resources.capture.layerwise import LayerRunner, as_rows
from ruv_resources.capture.windows import Windows

Progress = Callable[[str], None]
# v_proj through attention, measured on SmolLM2 (reviewer's q/v rank 8, KL removed on held-out text):
V_OUTPUT_MU = 0.1     # Tikhonov strength of the o_proj inverse: per-text windows 0.1 47%, 0.3 34%; packed 0.01 29%, 0.1 44%
V_SINK_WEIGHT = 0.3   # weight of the sink's zero-target row: 1.0 47%, 0.3 52%


@dataclass
class LayerStats:
    """One layer's statistics per split ("train", "val"): `gram[split][kind]`, `cross[split][key]`,
    `rr[split][key]`, and `n[split]` rows."""

    layer: int
    gram: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    cross: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rr: dict[str, dict[str, float]] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def capture_statistics(teacher, base, windows: Windows, targets: tuple[str, ...], *, batch: int = 8,
                       progress: Progress | None = None) -> Iterator[LayerStats]:
    """Teacher-forced statistics over the training windows (and the held-out ones as "val"),
    yielded one layer at a time so a caller can write each and let it go."""
    torch = _torch()
    runner = LayerRunner(teacher.model)
    kinds = sorted({INPUT_KIND[m] for m in targets})
    splits = {"train": windows.train, "val": windows.heldout}
    started = time.perf_counter()
    with torch.no_grad():
        residual = {s: runner.embed(windows.teacher[idx]) for s, idx in splits.items()}
        rope = {s: runner.rope(h) for s, h in residual.items()}
        for layer in range(teacher.info.num_layers):
            stats = LayerStats(layer)
            deltas = {m: (teacher.linear(layer, m).weight - base.linear(layer, m).weight).double().numpy() for m in targets}
            for split, h in residual.items():
                grams = {kind: np.zeros(_width(teacher, layer, kind), np.float64) for kind in kinds}
                outs = []
                for part in _chunks(h.shape[0], batch):
                    out, attn, mlp, _ = runner.layer(layer, h[part], rope[split])
                    seen = {"hidden": attn.x, "attn_out": attn.inner, "mlp_act": mlp.inner}
                    for kind in kinds:
                        X = as_rows(seen[kind])
                        # float64 products (the kernels' default): beside the forwards the Gram costs
                        # little here (docs/exact-solver.md, "Which one is used")
                        accumulate_gram(grams[kind], X, np.ones(X.shape[0], np.float32))
                    outs.append(out)
                residual[split] = torch.cat(outs)
                stats.n[split] = int(h.shape[0] * h.shape[1])
                stats.gram[split] = grams
                for module in targets:
                    C = grams[INPUT_KIND[module]] @ deltas[module].T
                    key = f"layers.{layer}.{module}"
                    stats.cross.setdefault(split, {})[key] = C
                    stats.rr.setdefault(split, {})[key] = float(np.sum(deltas[module].T * C))
            if progress:
                progress(f"captured layer {layer + 1}/{teacher.info.num_layers} "
                         f"({time.perf_counter() - started:.1f} s, {stats.n['train']} train rows)")
            yield stats


def _width(model, layer: int, kind: str) -> tuple[int, int]:
    module = {"hidden": "q_proj", "attn_out": "o_proj", "mlp_act": "down_proj"}[kind]
    d = model.linear(layer, module).in_features
    return (d, d)


def fit_layer(stats: LayerStats, spec: AdapterSpec, *, ridge_rel: float, split: str = "train") -> dict:
    """The rank-r optimum of each of the layer's target modules: `{key: ExactSolution}`."""
    fits = {}
    for module in spec.targets:
        key = f"layers.{stats.layer}.{module}"
        fits[key] = solve_reduced_rank(stats.gram[split][INPUT_KIND[module]], stats.cross[split][key], spec.rank, spec.scale,
                                       ridge_rel=ridge_rel, rr=stats.rr[split][key], q_sum=float(stats.n[split]),
                                       n=stats.n[split], name=key)
    return fits


def fit_sequential(base, teacher, windows: Windows, spec: AdapterSpec, *, ridge_rel: float, sink: bool,
                   batch: int = 8, progress: Progress | None = None) -> LoraAdapter:
    """Fit every target module in order on the student's own inputs (see the module docstring).

    `teacher` may be the base model itself (a system prompt teacher). `sink`: add the student's
    first position to each fit with a zero target instead of aligning it with the teacher's.
    """
    import copy

    torch = _torch()
    student_model = copy.deepcopy(base.model)
    student = type(base)(student_model, base.tokenizer, base.info)
    s_run, t_run = LayerRunner(student_model), LayerRunner(teacher.model)
    idx = windows.train
    T, P = windows.window, windows.offset
    # aligned columns: student 1..T with teacher P..P+T-1; without `sink`, also student 0 with teacher P-1
    sc = slice(1 if sink else 0, 1 + T)
    tc = slice(P if sink else P - 1, P + T)
    targets = set(spec.targets)
    A, B = {}, {}
    started = time.perf_counter()

    def fit(layer: int, module: str, X_s, R_text):
        """Solve one module from student inputs and targets; apply its delta to the student."""
        key = f"layers.{layer}.{module}"
        X = as_rows(X_s[:, sc])
        R = as_rows(R_text)
        d_in, d_out = X.shape[1], R.shape[1]
        G = np.zeros((d_in, d_in)); C = np.zeros((d_in, d_out))
        q = np.ones(X.shape[0], np.float32)
        accumulate_gram(G, X, q)
        accumulate_cross(C, X, R, q)
        rr, n = float(np.sum(R.astype(np.float64) ** 2)), X.shape[0]
        if sink:
            X0 = as_rows(X_s[:, :1])
            accumulate_gram(G, X0, np.ones(X0.shape[0], np.float32))  # zero target: leave the sink alone
            n += X0.shape[0]
        apply(layer, module, solve_reduced_rank(G, C, spec.rank, spec.scale, ridge_rel=ridge_rel, rr=rr,
                                                q_sum=float(n), n=n, name=key))

    def apply(layer: int, module: str, solution):
        """Keep a module's factors and add their delta to the student, so later fits see it."""
        key = f"layers.{layer}.{module}"
        A[key], B[key] = solution.A, solution.B
        delta = spec.scale * (solution.B.astype(np.float64) @ solution.A.astype(np.float64))
        student.linear(layer, module).weight += torch.from_numpy(delta.astype(np.float32))

    def fit_v(layer: int, h_s, x_s, h_t_mid):
        """v_proj through attention: the attention output should close the residual gap."""
        from ruv_resources.capture.attention_mix import attention_probs, grouped_statistics, output_target

        key = f"layers.{layer}.v_proj"
        before = s_run.attention(layer, h_s, rope_s)
        gap = h_t_mid[:, tc] - h_s[:, sc] - before.out[:, sc]
        target = output_target(gap, student.linear(layer, "o_proj").weight, V_OUTPUT_MU)
        probs, rep, head_dim = attention_probs(student.model.model.layers[layer], x_s, rope_s)
        grams, crosses = grouped_statistics(probs, x_s, target, sc, rep, head_dim, V_SINK_WEIGHT if sink else 0.0)
        apply(layer, "v_proj", solve_grouped_reduced_rank(grams, crosses, spec.rank, spec.scale, ridge_rel=ridge_rel, name=key))

    with torch.no_grad():
        h_t = t_run.embed(windows.teacher[idx])
        h_s = s_run.embed(windows.student[idx])
        rope_t, rope_s = t_run.rope(h_t), s_run.rope(h_s)
        for layer in range(base.info.num_layers):
            # the teacher's view of this layer, from the unmodified teacher weights
            h_t_out, attn_t, mlp_t, h_t_mid = t_run.layer(layer, h_t, rope_t)
            base_w = {m: base.linear(layer, m).weight for m in targets}
            if targets & {"q_proj", "k_proj", "v_proj"}:
                x_s = student.model.model.layers[layer].input_layernorm(h_s)
                for module in ("q_proj", "k_proj"):
                    if module in targets:
                        y_t = attn_t.x[:, tc] @ teacher.linear(layer, module).weight.T
                        fit(layer, module, x_s, y_t - x_s[:, sc] @ base_w[module].T)
                if "v_proj" in targets:  # after q/k, so it sees the attention weights they give
                    fit_v(layer, h_s, x_s, h_t_mid)
            attn_s = s_run.attention(layer, h_s, rope_s)
            if "o_proj" in targets:
                a = attn_s.inner
                target = h_t_mid[:, tc] - h_s[:, sc] - a[:, sc] @ base_w["o_proj"].T
                fit(layer, "o_proj", a, target)
                attn_s.out = a @ student.linear(layer, "o_proj").weight.T
            h_s_mid = h_s + attn_s.out
            if targets & {"gate_proj", "up_proj"}:
                x2 = student.model.model.layers[layer].post_attention_layernorm(h_s_mid)
                for module in ("gate_proj", "up_proj"):
                    if module in targets:
                        y_t = mlp_t.x[:, tc] @ teacher.linear(layer, module).weight.T
                        fit(layer, module, x2, y_t - x2[:, sc] @ base_w[module].T)
            mlp_s = s_run.mlp(layer, h_s_mid)
            if "down_proj" in targets:
                m = mlp_s.inner
                target = h_t_out[:, tc] - h_s_mid[:, sc] - m[:, sc] @ base_w["down_proj"].T
                fit(layer, "down_proj", m, target)
                mlp_s.out = m @ student.linear(layer, "down_proj").weight.T
            h_s = h_s_mid + mlp_s.out
            h_t = h_t_out
            if progress:
                progress(f"fitted layer {layer + 1}/{base.info.num_layers} ({time.perf_counter() - started:.1f} s)")
    return LoraAdapter(spec, A, B)


def _torch():
    import torch

    return torch
