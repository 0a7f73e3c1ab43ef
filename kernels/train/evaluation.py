"""The reported loss of given weights (per module and overall), the zero adapter's baseline, and
one module's loss share and gradients by the training kernel.

Validation uses every validation row, weighted by its quality (so it is comparable with the
synthetic noise floor), computed directly from `s B A x - r` with float64 accumulation.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ruv_kernels.fastmath import FASTMATH
from ruv_kernels.train.gradients import grad_by_rows
from ruv_kernels.train.micro import dot1
from ruv_kernels.train.problems import check_problems, prepare
from ruv_kernels.train.results import ModuleProblem
from ruv_kernels.train.bundles import Hyper
from ruv_kernels.train.workspace import Workspace


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def eval_module(X, R, rows, q, A, Bt, scale, Hs, Es, out_p):
    """sum_i q_i ||s B A x_i - r_i||^2 over `rows`, computed directly (float64 accumulation)."""
    n = rows.shape[0]
    r = A.shape[0]
    dout = Bt.shape[1]
    T = out_p.shape[0]
    chunk = (n + T - 1) // T
    s32 = np.float32(scale)
    for tid in prange(T):
        lo = tid * chunk
        hi = min(n, lo + chunk)
        e = Es[tid]
        h = Hs[tid]
        acc = 0.0
        for i in range(lo, hi):
            ri = rows[i]
            x = X[ri]
            rr = R[ri]
            for t in range(r):
                h[t] = s32 * dot1(A[t], x)
            for o in range(dout):
                e[o] = -rr[o]
            for t in range(r):
                ht = h[t]
                bt = Bt[t]
                for o in range(dout):
                    e[o] += ht * bt[o]
            row = 0.0
            for o in range(dout):
                row += np.float64(e[o]) * e[o]
            acc += q[ri] * row
        out_p[tid] = acc
    total = 0.0
    for tid in range(T):
        total += out_p[tid]
    return total


@njit(cache=True, parallel=True)
def row_sqnorms(R, out):
    for i in prange(R.shape[0]):
        acc = 0.0
        for o in range(R.shape[1]):
            acc += np.float64(R[i, o]) * R[i, o]
        out[i] = acc


def target_sqnorms(R: np.ndarray) -> np.ndarray:
    """||r_i||^2 of every row (float64), float16 converted in blocks."""
    out = np.empty(R.shape[0], np.float64)
    if R.dtype == np.float16:
        for c0 in range(0, out.shape[0], 1024):
            blk = R[c0:c0 + 1024].astype(np.float32)
            row_sqnorms(blk, out[c0:c0 + blk.shape[0]])
    else:
        row_sqnorms(R, out)
    return out


def module_sums(ws: Workspace, problems, q, split: str, W_override=None) -> dict[str, float]:
    """Per module sum_i q_i ||e_i||^2 / (sum q * out) over every row of the split."""
    q32 = np.ascontiguousarray(q, np.float32)
    Q = float(np.sum(q32, dtype=np.float64))
    n = q32.shape[0]
    out = {}
    step = max(1, ws.conv_rows)
    for p in problems:
        X = p.X_val if split == "val" else p.X_train
        R = p.R_val if split == "val" else p.R_train
        r, din, dout = ws.shapes[p.key]
        lo, hi, Wm, _, Am, Btm = ws.views[p.key]
        if W_override is not None:
            Wm = W_override[lo:hi]
            Am = Wm[: r * din].reshape(r, din)
            Btm = Wm[r * din:].reshape(r, dout)
        total = 0.0
        if X.dtype == np.float16 or R.dtype == np.float16:
            for c0 in range(0, n, step):
                rows = np.arange(c0, min(n, c0 + step), dtype=np.int64)
                Xb = ws.f32_rows(X, rows, ("ex", id(X)))
                Rb = ws.f32_rows(R, rows, ("er", id(R)))
                local = np.arange(rows.shape[0], dtype=np.int64)
                total += eval_module(Xb, Rb, local, q32[c0:c0 + rows.shape[0]], Am, Btm, ws.scales[p.key],
                                     ws.Hs, ws.Es, ws.loss_p)
        else:
            rows = np.arange(n, dtype=np.int64)
            total = eval_module(X, R, rows, q32, Am, Btm, ws.scales[p.key], ws.Hs, ws.Es, ws.loss_p)
        out[p.key] = total / (Q * dout) if Q > 0 else float("nan")
    return out


def mean_loss(ws: Workspace, problems, q, split: str, W_override=None) -> float:
    """The reported loss L: the mean over modules of `module_sums`."""
    return float(np.mean(list(module_sums(ws, problems, q, split, W_override).values())))


def evaluate_modules(problems, A, B, scale, q, split: str = "val") -> dict[str, float]:
    """Normalised weighted loss per module (sum q ||s B A x - r||^2 / (sum q * out))."""
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    qq = np.asarray(q, np.float32)
    if split == "val":
        check_problems(problems, A, B, None, qq)
    else:
        check_problems(problems, A, B, qq, None)
    probs = prepare(problems)
    ws = Workspace(probs, A, B, scale, 256, 256)
    return module_sums(ws, probs, qq, split)


def evaluate(problems, A, B, scale, q, split: str = "val") -> float:
    """The reported loss: mean over modules of the normalised weighted loss (see the package doc)."""
    per = evaluate_modules(problems, A, B, scale, q, split)
    return float(np.mean(list(per.values())))


def zero_adapter_loss(problems, q, split: str = "val") -> float:
    """The loss of the zero delta (B = 0): the baseline a trained adapter must beat."""
    A = {}
    B = {}
    for p in problems:
        A[p.key] = np.zeros((1, np.asarray(p.X_val).shape[1]), np.float32)
        B[p.key] = np.zeros((np.asarray(p.R_val).shape[1], 1), np.float32)
    return evaluate(problems, A, B, 1.0, q, split)


def module_gradients(X, R, q, A, B, scale: float, n_modules: int = 1):
    """One module's loss share and gradients on all rows of X/R, by the fused training kernel.

    Returns (loss, dA [r, in], dB [out, r]) with loss = sum_i w_i ||s B A x_i - r_i||^2,
    w_i = q_i / (n_modules * sum q * out): exactly what a training step computes for that module.
    """
    X = np.ascontiguousarray(X, np.float32)
    R = np.ascontiguousarray(R, np.float32)
    q = np.ascontiguousarray(q, np.float32)
    A = np.asarray(A, np.float32)
    B = np.asarray(B, np.float32)
    n = X.shape[0]
    if R.shape[0] != n or q.shape != (n,) or A.shape[1] != X.shape[1] or B.shape != (R.shape[1], A.shape[0]):
        raise ValueError(f"module_gradients: inconsistent shapes X {X.shape}, R {R.shape}, q {q.shape}, "
                         f"A {A.shape}, B {B.shape}")
    ws = Workspace([ModuleProblem("m", X, R, X[:1], R[:1])], {"m": A}, {"m": B}, float(scale), n, 1)
    r, din, dout = ws.shapes["m"]
    mods = ws.modules([X], [R], [target_sqnorms(R)])
    qsum = float(np.sum(q, dtype=np.float64))
    hyper = Hyper(0, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0.0, 0.0)  # lam 0: no EWC term; no update (fuse off)
    # the loss is L's share: coef 1 / (n_modules * sum q * out)
    loss, _, _ = grad_by_rows(mods, ws.scratch, ws.layout, ws.state, hyper, np.arange(n, dtype=np.int64), q,
                              1.0 / (int(n_modules) * qsum))  # one module: split by rows
    Gm = ws.views["m"][3]
    return float(loss), Gm[: r * din].reshape(r, din).copy(), np.ascontiguousarray(Gm[r * din:].reshape(r, dout).T)
