"""The per-module regression problems: built from a dataset's arrays, checked (shapes, NaN/inf,
quality in [0, 1]) before any work, and brought to their storage dtype (float16/float32 kept,
anything else float32)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ruv_kernels.finite import is_finite
from ruv_kernels.modules import INPUT_KIND
from ruv_kernels.train.results import ModuleProblem


def as_storage(name: str, arr) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == np.float16 or a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32)
    raise ValueError(f"{name}: dtype {a.dtype} is not float16/float32/float64")


def build_problems(inputs: dict, targets: dict, train_idx, val_idx, input_key: Callable[[str], str] | None = None):
    """ModuleProblems from "layers.{i}.{kind}" inputs and "layers.{i}.{module}" targets.

    Each input is row-gathered once and shared by every module that reads it (q/k/v).
    """
    if input_key is None:
        def input_key(key: str) -> str:
            prefix, module = key.rsplit(".", 1)
            if module not in INPUT_KIND:
                raise ValueError(f"{key}: unknown module {module!r}")
            return f"{prefix}.{INPUT_KIND[module]}"

    tr = np.asarray(train_idx, np.int64)
    va = np.asarray(val_idx, np.int64)
    split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    problems = []
    for key, R in targets.items():
        ik = input_key(key)
        if ik not in inputs:
            raise ValueError(f"{key}: needs input {ik}, which is missing")
        if ik not in split:
            X = inputs[ik]
            split[ik] = (np.ascontiguousarray(X[tr]), np.ascontiguousarray(X[va]))
        Xt, Xv = split[ik]
        problems.append(ModuleProblem(key, Xt, np.ascontiguousarray(R[tr]), Xv, np.ascontiguousarray(R[va])))
    return problems


def check_problems(problems, A, B, q_train, q_val):
    if not problems:
        raise ValueError("problems: no module problems given")
    seen = set()
    n_tr = None if q_train is None else len(q_train)
    n_va = None if q_val is None else len(q_val)
    for p in problems:
        if p.key in seen:
            raise ValueError(f"{p.key}: module key given twice")
        seen.add(p.key)
        if p.key not in A or p.key not in B:
            raise ValueError(f"{p.key}: no initial A/B given for this module")
        a = np.asarray(A[p.key])
        b = np.asarray(B[p.key])
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise ValueError(f"{p.key}: A {a.shape} and B {b.shape} are not [r, in] and [out, r]")
        r, din = a.shape
        dout = b.shape[0]
        for name, arr, rows, width in (("X_train", p.X_train, n_tr, din), ("R_train", p.R_train, n_tr, dout),
                                       ("X_val", p.X_val, n_va, din), ("R_val", p.R_val, n_va, dout)):
            if rows is None:
                continue
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape != (rows, width):
                raise ValueError(f"{p.key}: {name} has shape {arr.shape}, expected ({rows}, {width}) "
                                 f"(rows from the quality vector, width from A/B)")
        for name, arr in (("A", a), ("B", b)):
            if not is_finite(np.asarray(arr, np.float32)):
                raise ValueError(f"{p.key}: initial {name} contains NaN or infinite values")
    for name, qq in (("q_train", q_train), ("q_val", q_val)):
        if qq is None:
            continue
        qq = np.asarray(qq)
        if qq.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D quality vector, got shape {qq.shape}")
        if not is_finite(qq.astype(np.float32)):
            raise ValueError(f"{name}: contains NaN or infinite values")
        if qq.size and (qq.min() < 0.0 or qq.max() > 1.0):
            raise ValueError(f"{name}: quality must lie in [0, 1], got [{qq.min():.4g}, {qq.max():.4g}]")
    for name, qq in (("q_val", q_val), ("q", q_train if q_val is None else None)):
        if qq is None:
            continue
        if len(qq) == 0:
            raise ValueError(f"{name}: the evaluation set is empty")
        if float(np.sum(qq)) <= 0.0:
            raise ValueError(f"{name}: every example has quality 0 (the weighted loss is undefined)")


def prepare(problems):
    """Storage dtypes (float16/float32 kept, anything else float32), NaN checks naming the tensor."""
    out = []
    cache: dict[int, np.ndarray] = {}
    for p in problems:
        arrays = []
        for name in ("X_train", "R_train", "X_val", "R_val"):
            arr = getattr(p, name)
            if id(arr) not in cache:
                st = as_storage(f"{p.key}: {name}", arr)
                if not is_finite(st):
                    raise ValueError(f"{p.key}: {name} contains NaN or infinite values")
                cache[id(arr)] = st
            arrays.append(cache[id(arr)])
        out.append(ModuleProblem(p.key, *arrays))
    return out
