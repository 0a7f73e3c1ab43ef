"""Statistics of a whole dataset in one pass per input: a split is a weight vector, not a copy.

A dataset holds inputs `layers.{i}.{kind}` (kind = hidden, attn_out, mlp_act: what feeds each
module, `kernels.modules.INPUT_KIND`) and targets `layers.{i}.{module}`, all rows of all splits.
Instead of gathering a split's rows (a copy of X), the split and the quality filter become the
weights: `split_weights` puts q_i on the split's rows that pass the threshold and 0 elsewhere,
and the kernels skip the zero rows. Each input is streamed once for its Gram and the cross terms
of every module that reads it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.solve import ValidationData
from ruv_kernels.exact.stats import LayerStats, ModuleStats
from ruv_kernels.modules import INPUT_KIND


def split_weights(n_rows: int, rows, quality, threshold: float | None = None) -> np.ndarray:
    """Weights [n_rows] float32: quality[i] for i in rows with quality[i] >= threshold, else 0.

    quality: [n_rows], one score per dataset row (>= 0).
    """
    quality = np.asarray(quality, np.float32)
    if quality.shape != (n_rows,):
        raise ExactSolveError("dataset", f"quality must have one score per row ({n_rows}), got shape {quality.shape}")
    rows = np.asarray(rows, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ExactSolveError("dataset", f"split rows must lie in [0, {n_rows})")
    w = np.zeros(n_rows, np.float32)
    w[rows] = quality[rows]
    if threshold is not None:
        w[rows[quality[rows] < threshold]] = 0.0
    return w


def default_input_key(key: str) -> str:
    """`layers.3.q_proj` -> `layers.3.hidden` (the activation that feeds the module)."""
    prefix, _, module = key.rpartition(".")
    if module not in INPUT_KIND:
        raise ExactSolveError(key, f"unknown module {module!r}; expected one of {', '.join(INPUT_KIND)}")
    return f"{prefix}.{INPUT_KIND[module]}" if prefix else INPUT_KIND[module]


def dataset_stats(inputs: dict, targets: dict, weights, *, input_key: Callable[[str], str] = default_input_key,
                  precision: str = "float64", chunk_rows: int | None = None) -> dict[str, ModuleStats]:
    """{target key: ModuleStats} over the rows with weight > 0; modules reading one input share its Gram.

    inputs/targets: arrays [n_rows, in] / [n_rows, out] (float16/32/64), read in place.
    """
    groups: dict[str, list[str]] = {}
    for key in targets:
        ik = input_key(key)
        if ik not in inputs:
            raise ExactSolveError(key, f"needs input {ik}, which is missing")
        groups.setdefault(ik, []).append(key)
    out: dict[str, ModuleStats] = {}
    for ik, keys in groups.items():
        X = inputs[ik]
        layer = LayerStats(X.shape[1], {k: targets[k].shape[1] for k in keys}, name=ik, precision=precision)
        layer.update(X, {k: targets[k] for k in keys}, weights, chunk_rows=chunk_rows)
        for k in keys:
            out[k] = layer.module(k)
    return out


def dataset_rows(inputs: dict, targets: dict, weights, *,
                 input_key: Callable[[str], str] = default_input_key) -> dict[str, ValidationData]:
    """{target key: ValidationData(X, R, weights)}: raw rows for validation, referenced, not copied."""
    weights = np.asarray(weights)
    out = {}
    for key, R in targets.items():
        ik = input_key(key)
        if ik not in inputs:
            raise ExactSolveError(key, f"needs input {ik}, which is missing")
        out[key] = ValidationData(inputs[ik], R, weights)
    return out
