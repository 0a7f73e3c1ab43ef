"""Adapters from a real model: what the dataset and training assets do for an entry with `capture:`.

The dataset step reads the corpus (errors before any model loads), loads the base model and the
teacher, cuts the corpus into windows (train / held-out), and in teacher-forced mode captures the
per-layer statistics. The training step fits (from the statistics, or sequentially on the model)
and judges the adapter with PEFT on the base model, on the held-out windows. torch, transformers
and PEFT are imported here only when such an entry is materialised (the `capture` extra).
"""

from __future__ import annotations

import math
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from ruv_kernels.adapter import AdapterSpec, LoraAdapter
from ruv_kernels.exact import ExactSolveError, ModuleStats, certificate, loss_from_factors
from ruv_kernels.exact.certificate import CERTIFICATE_RIDGE_REL, relative_gap
from ruv_kernels.finite import is_finite
from ruv_kernels.modules import INPUT_KIND
from ruv_resources.base_model import content_hash
from ruv_resources.capture.corpus import read_corpus
from ruv_resources.capture.files import load_layer_stats, load_windows, read_meta, save_layer_stats, save_windows, stats_bytes
from ruv_resources.capture.windows import cut_windows, first_windows, make_windows
from ruv_resources.dataset_format import DatasetError


CERTIFICATE_RIDGES = (CERTIFICATE_RIDGE_REL, 1e-8, 1e-7)  # tried in turn, below the fit's own ridge


def _capture_extra():
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"capture needs the capture extra (pip install 'ruv-assets[capture]'): {exc}") from None


@lru_cache(maxsize=2)
def cached_model(path: str, version: str):
    """The base model, loaded once per process and content version."""
    from ruv_resources.capture.models import load_model

    return load_model(path)


def teacher_for(base, capture):
    """`(teacher model, prefix token ids)` of a capture entry."""
    from ruv_resources.capture.models import teacher_from_adapter, teacher_from_model

    if capture.system_prompt is not None:
        return base, base.encode(capture.system_prompt) + base.encode("\n\n")
    if capture.teacher_adapter is not None:
        return teacher_from_adapter(base, capture.teacher_adapter), []
    return teacher_from_model(base, capture.teacher_model), []


def build_dataset(directory: Path, name: str, capture, base_model_path: str, log) -> dict:
    """Write a captured dataset into `directory`; returns its metadata."""
    texts = read_corpus(capture.corpus)  # a bad corpus fails before a model is loaded
    _capture_extra()
    base_hash = content_hash(base_model_path)
    base = cached_model(base_model_path, base_hash)
    teacher, prefix = teacher_for(base, capture)
    body, skipped = _cut(base, texts, capture)
    if body.shape[0] < 2:
        short = (f" ({skipped} texts are shorter than one window: lower window, or set windows: stream)"
                 if skipped else "")
        raise DatasetError(f"{name}: capture: the corpus gives {body.shape[0]} window(s) of {capture.window} tokens{short}; "
                           "at least 2 are needed (one to train on, one held out)")
    windows = make_windows(body, base.bos_id, prefix, capture.heldout_fraction, capture.seed)
    mode = capture.effective_mode
    meta = {
        "kind": "captured", "task": name, "mode": mode, "teacher": capture.teacher_kind, "seed": capture.seed,
        "noise_floor": None, "window": capture.window, "windows": capture.effective_windows,
        "texts_shorter_than_window": skipped, "prefix_tokens": len(prefix),
        "train_windows": int(len(windows.train)), "heldout_windows": int(len(windows.heldout)),
        "train_tokens": int(len(windows.train) * capture.window), "heldout_tokens": int(len(windows.heldout) * capture.window),
        "base_model_hash": base_hash, "corpus_hash": content_hash(capture.corpus),
        "teacher_hash": _teacher_hash(capture),
    }
    save_windows(directory, windows, meta)
    log(f"{name}: {meta['train_windows']} training and {meta['heldout_windows']} held-out windows of {capture.window} tokens, {mode}")
    if mode == "teacher_forced":
        from ruv_resources.capture.fit import capture_statistics

        started = time.perf_counter()
        for stats in capture_statistics(teacher, base, windows, tuple(_targets_of(name)), batch=capture.batch_size, progress=log):
            save_layer_stats(directory, stats)
        meta["capture_seconds"] = round(time.perf_counter() - started, 2)
        meta["capture_tokens_per_s"] = round(windows.student.size / max(1e-9, meta["capture_seconds"]), 1)
    return meta


def _cut(base, texts: list[str], capture):
    """`(body [N, window], texts skipped as too short)`, tokenising only as much as is used."""
    window, limit = capture.window, capture.max_tokens
    if capture.effective_windows == "documents":
        return first_windows((base.encode(text) for text in texts), window, limit)
    tokens, total = [], 0
    for text in texts:
        tokens.append(base.encode(text))
        total += len(tokens[-1])
        if total >= limit:
            break
    return cut_windows(tokens, base.encode("\n\n"), window, limit), 0


def _targets_of(name: str):
    from ruv_assets.catalogue.catalogue import current_catalogue

    return current_catalogue().adapter(name).target_modules


def _teacher_hash(capture) -> str:
    from ruv_assets.assets.sources import teacher_version

    return teacher_version(capture)


def stored_sizes(spec: AdapterSpec, dims: dict, tokens: int) -> dict:
    """Bytes the statistics take (fixed) against raw X/R activations at float16 for `tokens` tokens."""
    widths = {"hidden": dims["hidden_size"], "attn_out": dims["q_size"], "mlp_act": dims["intermediate_size"]}
    outs = {m: spec.shape_of(f"layers.0.{m}")[1] for m in spec.targets}
    kinds = {INPUT_KIND[m] for m in spec.targets}
    raw = 2 * tokens * spec.num_layers * (sum(widths[k] for k in kinds) + sum(outs.values()))
    return {"stats_bytes": stats_bytes(widths, outs, kinds, spec.targets, spec.num_layers), "raw_float16_bytes": raw}


def train(name: str, spec: AdapterSpec, capture, dataset_dir: Path, base_model_path: str, log) -> tuple[LoraAdapter, dict]:
    """Fit the adapter of a captured dataset: from its statistics, or sequentially on the model."""
    _capture_extra()
    meta = read_meta(dataset_dir)
    if meta is None:
        raise DatasetError(f"{name}: the dataset is not a captured one; materialise the dataset again after adding capture:")
    if meta["base_model_hash"] != content_hash(base_model_path):
        raise DatasetError(f"{name}: the dataset was captured from another base model; materialise the dataset again")
    ridge = capture.effective_ridge
    started = time.perf_counter()
    metrics: dict = {"mode": meta["mode"], "ridge_rel": ridge}
    if meta["mode"] == "teacher_forced":
        adapter, solved = fit_from_statistics(dataset_dir, spec, ridge, log)
        metrics.update(solved)
    else:
        from ruv_resources.capture.fit import fit_sequential

        base = cached_model(base_model_path, meta["base_model_hash"])
        teacher, _ = teacher_for(base, capture)
        windows = load_windows(dataset_dir)
        adapter = fit_sequential(base, teacher, windows, spec, ridge_rel=ridge, sink=capture.system_prompt is not None,
                                 batch=capture.batch_size, progress=log)
        if capture.effective_refine_epochs:
            from ruv_resources.capture.refine import refine_adapter

            metrics["closed_form_seconds"] = round(time.perf_counter() - started, 2)
            adapter, refined = refine_adapter(base, teacher, windows, adapter, epochs=capture.effective_refine_epochs,
                                              lr=capture.refine_lr, batch=max(1, capture.batch_size // 2), seed=capture.seed,
                                              progress=log)
            metrics.update(refined)
        metrics["certificate"] = ("none: a sequential fit's inputs change as earlier layers are fitted, and the "
                                  "refinement minimises the KL, so no per-module least-squares optimum applies")
    metrics["fit_seconds"] = round(time.perf_counter() - started, 2)
    return adapter, metrics


def fit_from_statistics(dataset_dir: Path, spec: AdapterSpec, ridge_rel: float, log) -> tuple[LoraAdapter, dict]:
    """The rank-r optimum of every module from a teacher-forced capture's per-layer statistics,
    with its losses and its optimality certificate (as `certify_on_statistics`), each layer's
    file read once."""
    from ruv_resources.capture.fit import fit_layer

    A, B, layers = {}, {}, []
    for layer in range(spec.num_layers):
        stats = load_layer_stats(dataset_dir, layer)
        for key, solution in fit_layer(stats, spec, ridge_rel=ridge_rel).items():
            A[key], B[key] = solution.A, solution.B
        layers.append(_certify_layer(stats, A, B, spec, ridge_rel))
        log(f"solved layer {layer + 1}/{spec.num_layers}")
    return LoraAdapter(spec, A, B), _certificate_fields(layers)


def certify_on_statistics(dataset_dir: Path, adapter: LoraAdapter, ridge_rel: float) -> dict:
    """Any adapter of the capture's shapes against a teacher-forced capture's statistics, as a
    synthetic checkpoint is: train_loss, val_loss (held-out windows), optimal_train_loss,
    optimality_gap (None when the optimum rounds to <= 0), optimal_val_loss (means over modules),
    and certificate_ridge_rel: the largest ridge of any layer's optimum, each layer being
    certified at the smallest ridge its float32 Grams allow, at most `ridge_rel`."""
    spec = adapter.spec
    return _certificate_fields([_certify_layer(load_layer_stats(dataset_dir, layer), adapter.A, adapter.B, spec, ridge_rel)
                                for layer in range(spec.num_layers)])


def _certify_layer(stats, A: dict, B: dict, spec: AdapterSpec, ridge_rel: float):
    """`(module certificates, the factors' validation losses, ridge used)` of one layer."""
    keys = [f"layers.{stats.layer}.{module}" for module in spec.targets]
    factors = {key: (A[key], B[key], spec.scale) for key in keys}
    train_st = {key: _module_stats(stats, "train", key) for key in keys}
    val_st = {key: _module_stats(stats, "val", key) for key in keys}
    val_losses = [loss_from_factors(v.G, v.C, v.rr, v.q_sum, A[key], B[key], spec.scale, name=key)
                  for key, v in val_st.items()]
    cert, used = _certify(factors, train_st, val_st, ridge_rel)
    return list(cert.modules.values()), val_losses, used


def _certificate_fields(layers: list) -> dict:
    """Means over every module of every layer, as trained_adapter records them."""
    certified = [m for modules, _, _ in layers for m in modules]
    train_loss = float(np.mean([m.train_loss for m in certified]))
    optimum = float(np.mean([m.optimal_train_loss for m in certified]))
    gap = relative_gap(train_loss, optimum)  # an optimum rounded to <= 0 (an exact teacher): no ratio
    return {
        "train_loss": train_loss, "val_loss": float(np.mean([v for _, losses, _ in layers for v in losses])),
        "optimal_train_loss": optimum, "optimality_gap": gap if math.isfinite(gap) else None,
        "optimal_val_loss": float(np.mean([m.optimal_val_loss for m in certified])),
        "certificate_ridge_rel": max(used for _, _, used in layers),
    }


def _certify(factors: dict, train_st: dict, val_st: dict, ridge_rel: float):
    """`factors` ({key: (A, B, scale)}) against each module's rank-r optimum at the smallest ridge
    the statistics allow: `(Certificate, ridge_rel used)`. The statistics are stored as float32
    (each entry rounded, relative 6e-8), so a Gram with small eigenvalues is positive definite only
    to that rounding (on SmolLM2's layer 0 a ridge of 1e-9 fails); the certificate tries 1e-9, 1e-8
    and 1e-7 and stops at `ridge_rel` (the fit's own ridge)."""
    tries = sorted({r for r in CERTIFICATE_RIDGES if r < ridge_rel} | {ridge_rel})
    for rel in tries[:-1]:
        try:
            return certificate(factors, train_st, val_stats=val_st, ridge_rel=rel), rel
        except ExactSolveError:
            continue
    return certificate(factors, train_st, val_stats=val_st, ridge_rel=tries[-1]), tries[-1]


def _module_stats(stats, split: str, key: str) -> ModuleStats:
    """One module's captured statistics of one split as a ModuleStats (its Gram is the layer's array)."""
    G = stats.gram[split][INPUT_KIND[key.split(".")[2]]]
    C = stats.cross[split][key]
    if not (is_finite(G) and is_finite(C) and math.isfinite(stats.rr[split][key])):
        raise ExactSolveError(key, f"NaN or infinity in the captured {split} statistics; capture the dataset again")
    out = ModuleStats(G.shape[0], C.shape[1], G=G, name=key)
    out.C[...] = C
    out.rr, out.q_sum, out.n = stats.rr[split][key], float(stats.n[split]), int(stats.n[split])
    return out


def judge(name: str, capture, dataset_dir: Path, adapter: LoraAdapter, base_model_path: str, log) -> dict:
    """KL to the teacher, top-1 agreement and perplexity on held-out windows, with `adapter` saved
    in PEFT layout and loaded by PEFT onto the base model (before anything is stored)."""
    from ruv_resources.capture.judge import judge_adapter
    from ruv_resources.peft_format import save_adapter

    base = cached_model(base_model_path, content_hash(base_model_path))
    teacher, _ = teacher_for(base, capture)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        save_adapter(adapter, Path(scratch), base_model=base_model_path)
        scores = judge_adapter(base, teacher, load_windows(dataset_dir), Path(scratch), batch=max(1, capture.batch_size // 2))
    scores["judge_seconds"] = round(time.perf_counter() - started, 2)
    log(f"{name}: KL(teacher || base) {scores['teacher_kl_base']:.4f} -> {scores['teacher_kl']:.4f} "
        f"({scores['kl_removed']:.1%} removed), top-1 {scores['teacher_top1']:.3f}")
    return scores

