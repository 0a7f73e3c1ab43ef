"""Layer-wise LoRA training: quality-weighted regression with fused Numba forward/backward kernels.

The problem (DESIGN.md section 2). For each target (layer, module) with inputs `X [n, in]`,
residual targets `R [n, out]` and the adapter `delta = s * B @ A` (`A [r, in]`, `B [out, r]`):

    L_m   = sum_i q_i * ||s B A x_i - r_i||^2 / (sum_i q_i * out_m)     (per output element)
    L     = mean over the M modules of L_m                              (widths weigh equally)

over the examples with `q_i >= quality_threshold`. `L` is what is minimised (its gradient, plus the
EWC penalty's) and every reported train/val loss is `L` (`evaluate`). Validation uses every
validation row, weighted by its quality, so it is comparable with the synthetic noise floor.

One optimisation step (the whole inner loop over an epoch's minibatches runs inside Numba,
`_run_steps`, without returning to Python):

1. `_grad_step` (one fused kernel for every module) computes `h = A x`, `B^T r`, the loss, and the
   gradients of `L` w.r.t. A and B into preallocated buffers. It uses
   `||s B h - r||^2 = s^2 h^T (B^T B) h - 2 s h.(B^T r) + ||r||^2`, so it never forms the
   `[batch, out]` residual: four thin products (X A^T, R B, R^T (w H), G_h^T X) instead of five,
   each over four examples x two to four rank rows per inner loop. Work is split by module when
   the modules divide evenly over the threads (q/k/v/o on 2 threads: one fork-join per step, no
   partial sums), else by rows (per-thread partials, then a parallel reduction). It returns the
   squared norm of the full gradient (data + EWC penalty);
2. global gradient-norm clipping over all modules, like `torch.nn.utils.clip_grad_norm_`
   (`coef = min(1, max_norm / (norm + 1e-6))`);
3. the optimiser step (`_update_range`, fused per parameter block): online Fisher update, EWC
   penalty gradient, the clip, then AdamW (decoupled decay) / Adam (L2 in the gradient) / SGD
   (optional momentum), with LoRA+ (`lr_B = lr * loraplus_ratio`). Without clipping and with the
   by-module split, each thread applies it to its own modules inside `_grad_step`.

EWC++: the penalty `lambda/2 * sum F* (w - w*)^2` uses the anchor weights `w*` and Fisher `F*`
given in `EwcState` (fixed during the run). The online Fisher `F <- d F + (1 - d) g^2` is estimated
from the squared minibatch gradients of `L` (before clipping, without the penalty); it starts
from `F*` when given (so older tasks fade with `d^steps`) and is bias-corrected like Adam's second
moment when started from zero. It is returned for the next run.

Mixed precision: inputs/targets may be stored as float16 (half the memory of the dataset). Each
minibatch (and each validation chunk) is gathered and converted into preallocated float32
buffers, and the kernels read float32 only; master weights, optimiser state, gradients and every
accumulation are float32 (losses float64). With float32 storage the kernels read the rows in place.

Gradient checkpointing is deliberately absent: training is layer-wise, each module's problem is
one linear map of stored inputs, so there are no activations between layers to drop and recompute.

Determinism: shuffles (own splitmix64 Fisher-Yates) and every reduction order are fixed by the
seed and the thread count (per-thread partial sums are combined in thread order), so a run is
bit-identical for a seed at a given NUMBA_NUM_THREADS; other thread counts agree to rounding.

Threads: the kernels are fork-join over NUMBA_NUM_THREADS. On cores shared with other busy
processes every fork-join waits for a descheduled thread; `TrainSettings.num_threads` (or
NUMBA_NUM_THREADS=1) avoids that when several trainings share a machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import numba
import numpy as np
from numba import njit, prange
from numba.typed import List

from kernels.hashing import all_finite as _all_finite
from kernels.hashing import mix64 as _mix64
from kernels.modules import INPUT_KIND
from kernels.schedules import _resolve as _resolve_schedule
from kernels.schedules import lr_table, schedule_name

OPTIMIZERS = ("adamw", "adam", "sgd")
_OPT_CODE = {"adamw": 0, "adam": 1, "sgd": 2}
_FM = {"reassoc", "contract", "arcp", "nsz"}  # no "nnan"/"ninf": NaN must still propagate
_FM_UPDATE = _FM | {"afn"}  # the optimiser's sqrt/divide may use the fast approximate forms

_MASK = 0xFFFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------------------------
# settings and results


@dataclass
class TrainSettings:
    """Training configuration (the owner maps the pydantic/Dagster config onto it).

    Defaults are tuned so that the synthetic coder/security/reviewer presets reach the noise floor
    (tests/kernels/test_train_acceptance.py): AdamW lr 0.02 with cosine decay over 40 epochs of
    batch 32, 20 warmup steps.

    Early stopping: training stops once `patience` evaluations in a row (each epoch end, plus
    every `eval_every_steps` steps if > 0) did not improve the validation loss by more than
    `min_delta` (absolute) over the last such improvement; patience 0 behaves like 1 (as in Keras).
    The returned checkpoint is the lowest validation loss seen, whatever min_delta.
    `max_grad_norm` 0 disables clipping. Schedule parameters are those of kernels.schedules
    (`gamma` None = the schedule's own default). `ewc_lambda` only acts when an EwcState is passed
    to `train`; it multiplies a Fisher made of squared gradients of L, so its useful size depends on
    the data's units (on the synthetic tasks ~1-100 trades old task against new; 2000 all but
    freezes the anchored weights). `num_threads` 0 = NUMBA_NUM_THREADS; use 1 when several
    trainings share the cores.
    """

    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 0.02
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    loraplus_ratio: float = 1.0
    max_grad_norm: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    gamma: float | None = None
    step_size: int = 0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    quality_threshold: float = 0.3
    patience: int = 20
    min_delta: float = 1e-4
    eval_every_steps: int = 0
    ewc_lambda: float = 2000.0
    fisher_decay: float = 0.999
    seed: int = 0
    num_threads: int = 0

    def schedule_params(self) -> dict:
        return {"min_lr_ratio": self.min_lr_ratio, "gamma": self.gamma, "step_size": self.step_size,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}

    def validate(self) -> "TrainSettings":
        """Raise ValueError naming the first bad field; return self when all are valid."""

        def num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            if not math.isfinite(float(v)):
                raise ValueError(f"{name} must be finite, got {v!r}")
            return float(v)

        def integer(name: str) -> int:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            return int(v)

        if integer("epochs") < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if integer("batch_size") < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if num("learning_rate") <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if num("weight_decay") < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        try:
            b1, b2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be two numbers, got {self.betas!r}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must both lie in [0, 1), got {self.betas!r}")
        if num("eps") <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not 0.0 <= num("momentum") < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if num("loraplus_ratio") <= 0:
            raise ValueError(f"loraplus_ratio must be > 0, got {self.loraplus_ratio}")
        if num("max_grad_norm") < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        schedule_name(self.schedule)
        if integer("warmup_steps") < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _resolve_schedule(self.schedule, 1, float(self.learning_rate), 0, self.schedule_params())
        if not 0.0 <= num("quality_threshold") <= 1.0:
            raise ValueError(f"quality_threshold must lie in [0, 1], got {self.quality_threshold}")
        if integer("patience") < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if num("min_delta") < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if integer("eval_every_steps") < 0:
            raise ValueError(f"eval_every_steps must be >= 0 (0 = only at epoch ends), got {self.eval_every_steps}")
        if num("ewc_lambda") < 0:
            raise ValueError(f"ewc_lambda must be >= 0, got {self.ewc_lambda}")
        if not 0.0 <= num("fisher_decay") < 1.0:
            raise ValueError(f"fisher_decay must lie in [0, 1), got {self.fisher_decay}")
        integer("seed")
        if integer("num_threads") < 0 or self.num_threads > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"num_threads must lie in [0, {numba.config.NUMBA_NUM_THREADS}] "
                             f"(0 = NUMBA_NUM_THREADS), got {self.num_threads}")
        return self

    def replace(self, **changes) -> "TrainSettings":
        names = {f.name for f in fields(self)}
        bad = set(changes) - names
        if bad:
            raise ValueError(f"unknown TrainSettings field(s): {sorted(bad)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return TrainSettings(**values)


@dataclass
class ModuleProblem:
    """One (layer, module) regression. Modules that read the same input (q/k/v) should share the
    very same X arrays (as `build_problems` does): nothing is copied per module."""

    key: str
    X_train: np.ndarray
    R_train: np.ndarray
    X_val: np.ndarray
    R_val: np.ndarray


@dataclass
class EwcState:
    """Anchor of the EWC penalty: previous weights and their Fisher, per module key.

    fisher[key] = (FA [r, in], FB [out, r]), the shapes of A and B. Keys absent here get no penalty.
    """

    A: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    fisher: dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class TrainResult:
    """The best checkpoint (lowest validation loss) and how the run went.

    history: one dict per evaluation with epoch, step, train_loss (mean minibatch loss since the
    previous evaluation; the full training-set loss for the epoch-0 row), val_loss, lr (of the
    last step), ewc_penalty, kind ("init" | "epoch" | "step").
    train_loss / val_loss: losses of the returned checkpoint on the (quality-filtered) training
    rows and on the validation rows. fisher: online Fisher, keyed like A/B, (FA, FB).
    """

    A: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    early_stopped: bool = False
    best_epoch: int = 0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    fisher: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    steps: int = 0
    best_step: int = 0
    n_train_used: int = 0


# ----------------------------------------------------------------------------------------------
# kernels


@njit(cache=True, inline="always", fastmath=_FM)
def _dot4(a, x0, x1, x2, x3):
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for j in range(a.shape[0]):
        aj = a[j]
        s0 += aj * x0[j]
        s1 += aj * x1[j]
        s2 += aj * x2[j]
        s3 += aj * x3[j]
    return s0, s1, s2, s3


@njit(cache=True, inline="always", fastmath=_FM)
def _dot1(a, x0):
    s0 = np.float32(0.0)
    for j in range(a.shape[0]):
        s0 += a[j] * x0[j]
    return s0


@njit(cache=True, inline="always", fastmath=_FM)
def _rb_g4(bt, g, r0, r1, r2, r3, w0, w1, w2, w3):
    """c_b = bt . r_b (the B^T r entries) and g += sum_b w_b r_b, in one pass over the outputs."""
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    for o in range(bt.shape[0]):
        b = bt[o]
        v0 = r0[o]
        v1 = r1[o]
        v2 = r2[o]
        v3 = r3[o]
        c0 += b * v0
        c1 += b * v1
        c2 += b * v2
        c3 += b * v3
        g[o] += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3
    return c0, c1, c2, c3


@njit(cache=True, inline="always", fastmath=_FM)
def _rb_g1(bt, g, r0, w0):
    c0 = np.float32(0.0)
    for o in range(bt.shape[0]):
        v0 = r0[o]
        c0 += bt[o] * v0
        g[o] += w0 * v0
    return c0


@njit(cache=True, inline="always", fastmath=_FM)
def _axpy4(g, c0, c1, c2, c3, x0, x1, x2, x3):
    for j in range(g.shape[0]):
        g[j] += c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j]


@njit(cache=True, inline="always", fastmath=_FM)
def _axpy1(g, c0, x0):
    for j in range(g.shape[0]):
        g[j] += c0 * x0[j]


@njit(cache=True, inline="always", fastmath=_FM)
def _dot4x2(a, b, x0, x1, x2, x3):
    """Eight dot products (two rank rows x four examples) sharing every load."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    t0 = np.float32(0.0)
    t1 = np.float32(0.0)
    t2 = np.float32(0.0)
    t3 = np.float32(0.0)
    for j in range(a.shape[0]):
        aj = a[j]
        bj = b[j]
        v0 = x0[j]
        v1 = x1[j]
        v2 = x2[j]
        v3 = x3[j]
        s0 += aj * v0
        s1 += aj * v1
        s2 += aj * v2
        s3 += aj * v3
        t0 += bj * v0
        t1 += bj * v1
        t2 += bj * v2
        t3 += bj * v3
    return s0, s1, s2, s3, t0, t1, t2, t3


@njit(cache=True, inline="always", fastmath=_FM)
def _dot4x4(H, i, t, a0, a1, a2, a3, x0, x1, x2, x3):
    """H[i:i+4, t:t+4] = four rank rows . four examples: 16 dot products sharing every load."""
    s00 = s01 = s02 = s03 = np.float32(0.0)
    s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = np.float32(0.0)
    s30 = s31 = s32 = s33 = np.float32(0.0)
    for j in range(a0.shape[0]):
        v0 = x0[j]
        v1 = x1[j]
        v2 = x2[j]
        v3 = x3[j]
        a = a0[j]
        b = a1[j]
        c = a2[j]
        d = a3[j]
        s00 += a * v0
        s01 += a * v1
        s02 += a * v2
        s03 += a * v3
        s10 += b * v0
        s11 += b * v1
        s12 += b * v2
        s13 += b * v3
        s20 += c * v0
        s21 += c * v1
        s22 += c * v2
        s23 += c * v3
        s30 += d * v0
        s31 += d * v1
        s32 += d * v2
        s33 += d * v3
    H[i, t] = s00
    H[i + 1, t] = s01
    H[i + 2, t] = s02
    H[i + 3, t] = s03
    H[i, t + 1] = s10
    H[i + 1, t + 1] = s11
    H[i + 2, t + 1] = s12
    H[i + 3, t + 1] = s13
    H[i, t + 2] = s20
    H[i + 1, t + 2] = s21
    H[i + 2, t + 2] = s22
    H[i + 3, t + 2] = s23
    H[i, t + 3] = s30
    H[i + 1, t + 3] = s31
    H[i + 2, t + 3] = s32
    H[i + 3, t + 3] = s33


@njit(cache=True, inline="always", fastmath=_FM)
def _rb_g4x2(ba, bb, ga, gb, r0, r1, r2, r3, wa0, wa1, wa2, wa3, wb0, wb1, wb2, wb3):
    """_rb_g4 for two rank rows at once."""
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    d0 = np.float32(0.0)
    d1 = np.float32(0.0)
    d2 = np.float32(0.0)
    d3 = np.float32(0.0)
    for o in range(ba.shape[0]):
        a = ba[o]
        b = bb[o]
        v0 = r0[o]
        v1 = r1[o]
        v2 = r2[o]
        v3 = r3[o]
        c0 += a * v0
        c1 += a * v1
        c2 += a * v2
        c3 += a * v3
        d0 += b * v0
        d1 += b * v1
        d2 += b * v2
        d3 += b * v3
        ga[o] += wa0 * v0 + wa1 * v1 + wa2 * v2 + wa3 * v3
        gb[o] += wb0 * v0 + wb1 * v1 + wb2 * v2 + wb3 * v3
    return c0, c1, c2, c3, d0, d1, d2, d3


@njit(cache=True, inline="always", fastmath=_FM)
def _axpy4x2(ga, gb, a0, a1, a2, a3, b0, b1, b2, b3, x0, x1, x2, x3):
    """_axpy4 for two rank rows at once."""
    for j in range(ga.shape[0]):
        v0 = x0[j]
        v1 = x1[j]
        v2 = x2[j]
        v3 = x3[j]
        ga[j] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
        gb[j] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3


@njit(cache=True, inline="always", fastmath=_FM)
def _row_terms(lo, hi, rows, q, coef, rsq, scale, H, RB, WH, U, GH, BtB, S):
    """The r x r work of rows lo..hi: u = B^T B h, the gradient w.r.t. h, the loss, S += w h h^T.

    Written as separate unit-stride loops over the rank so that each one vectorises.
    """
    r = H.shape[1]
    s32 = np.float32(scale)
    loss = 0.0
    for i in range(lo, hi):
        hi_ = H[i]
        u = U[i]
        for t in range(r):
            u[t] = 0.0
        for v in range(r):
            hv = hi_[v]
            bv = BtB[v]
            for t in range(r):
                u[t] += hv * bv[t]
        hu = np.float32(0.0)
        hrb = np.float32(0.0)
        rb = RB[i]
        for t in range(r):
            hu += hi_[t] * u[t]
            hrb += hi_[t] * rb[t]
        w = q[rows[i]] * coef
        c = np.float32(2.0 * scale * w)
        gh = GH[i]
        for t in range(r):
            gh[t] = c * (s32 * u[t] - rb[t])
        loss += w * (scale * scale * hu - 2.0 * scale * hrb + rsq[rows[i]])
        wh = WH[i]
        for t in range(r):
            wt = wh[t]
            st = S[t]
            for v in range(r):
                st[v] += wt * hi_[v]
    return loss


@njit(cache=True, inline="always", fastmath=_FM)
def _chunk_grads(X, R, rows, q, coef, rsq, A, Bt, BtB, scale, gA, gB, S, H, RB, WH, U, GH, lo, hi):
    """One thread's rows lo..hi of one module: partial gradients into gA/gB/S, returns the loss sum.

    Four examples x two to four rank rows per inner loop, so that every loaded vector serves several
    FMAs (the loops are load-bound otherwise).
    """
    r = A.shape[0]
    gA[:, :] = 0.0
    gB[:, :] = 0.0
    S[:, :] = 0.0
    loss = 0.0
    i = lo
    while i + 4 <= hi:
        i0 = rows[i]
        i1 = rows[i + 1]
        i2 = rows[i + 2]
        i3 = rows[i + 3]
        x0 = X[i0]
        x1 = X[i1]
        x2 = X[i2]
        x3 = X[i3]
        w0 = np.float32(q[i0] * coef)
        w1 = np.float32(q[i1] * coef)
        w2 = np.float32(q[i2] * coef)
        w3 = np.float32(q[i3] * coef)
        t = 0
        while t + 4 <= r:
            _dot4x4(H, i, t, A[t], A[t + 1], A[t + 2], A[t + 3], x0, x1, x2, x3)
            t += 4
        while t + 2 <= r:
            h0, h1, h2, h3, k0, k1, k2, k3 = _dot4x2(A[t], A[t + 1], x0, x1, x2, x3)
            H[i, t] = h0
            H[i + 1, t] = h1
            H[i + 2, t] = h2
            H[i + 3, t] = h3
            H[i, t + 1] = k0
            H[i + 1, t + 1] = k1
            H[i + 2, t + 1] = k2
            H[i + 3, t + 1] = k3
            t += 2
        if t < r:
            h0, h1, h2, h3 = _dot4(A[t], x0, x1, x2, x3)
            H[i, t] = h0
            H[i + 1, t] = h1
            H[i + 2, t] = h2
            H[i + 3, t] = h3
        for t in range(r):
            WH[i, t] = w0 * H[i, t]
            WH[i + 1, t] = w1 * H[i + 1, t]
            WH[i + 2, t] = w2 * H[i + 2, t]
            WH[i + 3, t] = w3 * H[i + 3, t]
        r0 = R[i0]
        r1 = R[i1]
        r2 = R[i2]
        r3 = R[i3]
        t = 0
        while t + 2 <= r:
            c0, c1, c2, c3, d0, d1, d2, d3 = _rb_g4x2(
                Bt[t], Bt[t + 1], gB[t], gB[t + 1], r0, r1, r2, r3,
                WH[i, t], WH[i + 1, t], WH[i + 2, t], WH[i + 3, t],
                WH[i, t + 1], WH[i + 1, t + 1], WH[i + 2, t + 1], WH[i + 3, t + 1])
            RB[i, t] = c0
            RB[i + 1, t] = c1
            RB[i + 2, t] = c2
            RB[i + 3, t] = c3
            RB[i, t + 1] = d0
            RB[i + 1, t + 1] = d1
            RB[i + 2, t + 1] = d2
            RB[i + 3, t + 1] = d3
            t += 2
        if t < r:
            c0, c1, c2, c3 = _rb_g4(Bt[t], gB[t], r0, r1, r2, r3,
                                    WH[i, t], WH[i + 1, t], WH[i + 2, t], WH[i + 3, t])
            RB[i, t] = c0
            RB[i + 1, t] = c1
            RB[i + 2, t] = c2
            RB[i + 3, t] = c3
        loss += _row_terms(i, i + 4, rows, q, coef, rsq, scale, H, RB, WH, U, GH, BtB, S)
        t = 0
        while t + 2 <= r:
            _axpy4x2(gA[t], gA[t + 1], GH[i, t], GH[i + 1, t], GH[i + 2, t], GH[i + 3, t],
                     GH[i, t + 1], GH[i + 1, t + 1], GH[i + 2, t + 1], GH[i + 3, t + 1], x0, x1, x2, x3)
            t += 2
        if t < r:
            _axpy4(gA[t], GH[i, t], GH[i + 1, t], GH[i + 2, t], GH[i + 3, t], x0, x1, x2, x3)
        i += 4
    while i < hi:
        i0 = rows[i]
        x0 = X[i0]
        w0 = np.float32(q[i0] * coef)
        for t in range(r):
            h0 = _dot1(A[t], x0)
            H[i, t] = h0
            WH[i, t] = w0 * h0
        r0 = R[i0]
        for t in range(r):
            RB[i, t] = _rb_g1(Bt[t], gB[t], r0, WH[i, t])
        loss += _row_terms(i, i + 1, rows, q, coef, rsq, scale, H, RB, WH, U, GH, BtB, S)
        for t in range(r):
            _axpy1(gA[t], GH[i, t], x0)
        i += 1
    return loss


@njit(cache=True, inline="always", fastmath=_FM)
def _reduce_row(row, T, gA_p, gBt_p, Stot, Bt, scale, Wm, Gm, Fanc, Wanc, lam):
    """Row `row` of the module's flat [A | B^T] gradient from the first T per-thread partials, plus
    its squared norm with the EWC term and its EWC penalty sum F (w - w*)^2.

    Whole-row passes (sum the partials, add s S B^T, scale, norm) so that each one vectorises.
    """
    r, din = gA_p.shape[1], gA_p.shape[2]
    dout = Bt.shape[1]
    if row < r:
        t = row
        base = t * din
        width = din
        g = Gm[base:base + din]
        src = gA_p[0, t]
        for j in range(din):
            g[j] = src[j]
        for tid in range(1, T):
            src = gA_p[tid, t]
            for j in range(din):
                g[j] += src[j]
    else:
        t = row - r
        base = r * din + t * dout
        width = dout
        g = Gm[base:base + dout]
        two_s = np.float32(2.0 * scale)
        src = gBt_p[0, t]
        for o in range(dout):
            g[o] = -two_s * src[o]
        for tid in range(1, T):
            src = gBt_p[tid, t]
            for o in range(dout):
                g[o] -= two_s * src[o]
        for u in range(r):
            c = two_s * np.float32(scale) * Stot[t, u]
            bu = Bt[u]
            for o in range(dout):
                g[o] += c * bu[o]
    sq = np.float32(0.0)
    pen = np.float32(0.0)
    if lam > 0.0:
        lam32 = np.float32(lam)
        f = Fanc[base:base + width]
        w = Wm[base:base + width]
        wa = Wanc[base:base + width]
        for j in range(width):
            dw = w[j] - wa[j]
            gt = g[j] + lam32 * f[j] * dw
            pen += f[j] * dw * dw
            sq += gt * gt
    else:
        for j in range(width):
            sq += g[j] * g[j]
    return np.float64(sq), np.float64(pen)


@njit(cache=True, inline="always", fastmath=_FM)
def _bt_gram_serial(Bt, BtB):
    r = Bt.shape[0]
    for t in range(r):
        for v in range(t, r):
            d = _dot1(Bt[t], Bt[v])
            BtB[t, v] = d
            BtB[v, t] = d


@njit(cache=True, parallel=True, fastmath=_FM)
def _grad_step(Xs, Rs, rsqs, As, Bts, BtBs, gA_ps, gBt_ps, S_ps, Stots, Wms, Gms, Fas, Was,
               H, RB, WH, U, GH, rows, q, cscale, inv_out, scales, lam, roff, goff, loss_pm, sq_rows, pen_rows,
               assign, aoff, fuse, W, G, M1, M2, Fon, Fanc, Wanc, offs, a_len, ratio, lr, step, opt, hp):
    """Forward + backward of every module on one minibatch.

    Two schedules, chosen by the caller (`aoff`):
    - by module (aoff has T+1 entries): thread `tid` owns modules assign[aoff[tid]:aoff[tid+1]] and
      does all of their work over all rows (B^T B, `_chunk_grads`, the final gradient rows): one
      fork-join per step and no partials to combine. Used when the modules split evenly enough.
      With `fuse` (no global clipping to wait for) the thread also applies the optimiser step to
      its modules right away (flat W.. with module offsets `offs`, A lengths `a_len`, LoRA+ `ratio`,
      hp = (b1, b2, eps, wd, momentum, fisher_decay)), so a whole training step is one fork-join.
    - by rows (aoff empty): B^T B of every module; each thread runs every module on its share of
      the rows; the per-thread partials are combined row by row (three fork-joins).
    coef of module m = cscale * inv_out[m] = 1 / (M * sum_batch q * out_m). H..GH are per-thread
    row scratch [T, rows, r_max]. Returns (loss = sum over modules of sum_i w_i ||e_i||^2, squared
    gradient norm incl. EWC, EWC penalty sum F (w - w*)^2).
    """
    M = len(Xs)
    n = rows.shape[0]
    T = loss_pm.shape[1]
    loss_pm[:, :] = 0.0
    if aoff.shape[0] > 0:
        for tid in prange(aoff.shape[0] - 1):
            for a in range(aoff[tid], aoff[tid + 1]):
                m = assign[a]
                _bt_gram_serial(Bts[m], BtBs[m])
                loss_pm[m, 0] = _chunk_grads(Xs[m], Rs[m], rows, q, cscale * inv_out[m], rsqs[m], As[m], Bts[m],
                                             BtBs[m], scales[m], gA_ps[m][0], gBt_ps[m][0], S_ps[m][0],
                                             H[tid], RB[tid], WH[tid], U[tid], GH[tid], 0, n)
                Stots[m][:, :] = S_ps[m][0]
                for row in range(goff[m + 1] - goff[m]):
                    sq, pen = _reduce_row(row, 1, gA_ps[m], gBt_ps[m], Stots[m], Bts[m], scales[m], Wms[m],
                                          Gms[m], Fas[m], Was[m], lam)
                    sq_rows[goff[m] + row] = sq
                    pen_rows[goff[m] + row] = pen
                if fuse:
                    mid = offs[m] + a_len[m]
                    _update_range(W, G, M1, M2, Fon, Fanc, Wanc, offs[m], mid, lr, 1.0, step, opt,
                                  hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], lam)
                    _update_range(W, G, M1, M2, Fon, Fanc, Wanc, mid, offs[m + 1], lr * ratio, 1.0, step, opt,
                                  hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], lam)
    else:
        # phase 1: B^T B (r x r) of every module
        for idx in prange(roff[M]):
            m = 0
            while roff[m + 1] <= idx:
                m += 1
            t = idx - roff[m]
            Bt = Bts[m]
            BtB = BtBs[m]
            for v in range(Bt.shape[0]):
                BtB[t, v] = _dot1(Bt[t], Bt[v])
        # phase 2: per-thread partial gradients, every module
        chunk = (n + T - 1) // T
        for tid in prange(T):
            lo = tid * chunk
            hi = min(n, lo + chunk)
            for m in range(M):
                loss_pm[m, tid] = _chunk_grads(Xs[m], Rs[m], rows, q, cscale * inv_out[m], rsqs[m], As[m],
                                               Bts[m], BtBs[m], scales[m], gA_ps[m][tid], gBt_ps[m][tid],
                                               S_ps[m][tid], H[0], RB[0], WH[0], U[0], GH[0], lo, hi)
        # combine the S partials (thread order: deterministic)
        for m in range(M):
            Stot = Stots[m]
            S_p = S_ps[m]
            Stot[:, :] = S_p[0]
            for tid in range(1, T):
                Stot += S_p[tid]
        # phase 3: reduce the partials, row by row over every module
        for idx in prange(goff[M]):
            m = 0
            while goff[m + 1] <= idx:
                m += 1
            sq, pen = _reduce_row(idx - goff[m], T, gA_ps[m], gBt_ps[m], Stots[m], Bts[m], scales[m], Wms[m],
                                  Gms[m], Fas[m], Was[m], lam)
            sq_rows[idx] = sq
            pen_rows[idx] = pen
    loss = 0.0
    for m in range(M):
        for tid in range(T):
            loss += loss_pm[m, tid]
    sq = 0.0
    pen = 0.0
    for idx in range(goff[M]):
        sq += sq_rows[idx]
        pen += pen_rows[idx]
    return loss, sq, pen


@njit(cache=True)
def _run_steps(Xs, Rs, rsqs, As, Bts, BtBs, gA_ps, gBt_ps, S_ps, Stots, Wms, Gms, Fas, Was,
               H, RB, WH, U, GH, inv_out, scales, roff, goff, loss_pm, sq_rows, pen_rows, assign, aoff,
               order, b_from, b_to, bs, q, lrs, step0, W, G, M1, M2, Fon, Fanc, Wanc, opt, hp,
               c_lo, c_hi, c_mult, offs, a_len, ratio):
    """Minibatches b_from..b_to of an epoch (rows order[b*bs:(b+1)*bs]), each a `_grad_step`, the
    global clip and an `_update`: the whole inner loop runs without returning to Python.

    hp = (beta1, beta2, eps, weight_decay, momentum, fisher_decay, ewc_lambda, max_grad_norm).
    Returns (step, sum of minibatch losses, minibatches run, last EWC penalty, last lr, status);
    status 1 = the loss or the gradient stopped being finite.
    """
    b1, b2, eps, wd, mom, decay, lam, max_norm = hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7]
    M = len(Xs)
    fuse = aoff.shape[0] > 0 and max_norm <= 0.0
    n_keep = order.shape[0]
    step = step0
    loss_sum = 0.0
    count = 0
    pen_last = 0.0
    lr = 0.0
    for b in range(b_from, b_to):
        lo = b * bs
        hi = min(n_keep, lo + bs)
        rows = order[lo:hi]
        qb = _qsum(q, rows)
        lr = lrs[step]
        step += 1
        if qb <= 0.0:
            continue
        loss, sq, pen = _grad_step(Xs, Rs, rsqs, As, Bts, BtBs, gA_ps, gBt_ps, S_ps, Stots, Wms, Gms, Fas, Was,
                                   H, RB, WH, U, GH, rows, q, 1.0 / (M * qb), inv_out, scales, lam, roff, goff,
                                   loss_pm, sq_rows, pen_rows, assign, aoff, fuse, W, G, M1, M2, Fon, Fanc, Wanc,
                                   offs, a_len, ratio, lr, step, opt, hp)
        if not (math.isfinite(loss) and math.isfinite(sq)):
            return step, loss_sum, count, pen_last, lr, 1
        if not fuse:
            clip = 1.0
            if max_norm > 0.0:
                clip = min(1.0, max_norm / (math.sqrt(sq) + 1e-6))
            _update(W, G, M1, M2, Fon, Fanc, Wanc, lam, clip, lr, opt, b1, b2, eps, wd, mom, step, decay,
                    c_lo, c_hi, c_mult)
        loss_sum += loss
        count += 1
        pen_last = 0.5 * lam * pen
    return step, loss_sum, count, pen_last, lr, 0


@njit(cache=True, inline="always", fastmath=_FM_UPDATE)
def _update_range(W, G, M1, M2, Fon, Fanc, Wanc, start, end, lr, clip, step, opt, b1, b2, eps, wd, momentum,
                  decay, lam):
    """The optimiser step for parameters start..end (one learning rate), fused with the online
    Fisher, the EWC penalty gradient and the clip.

    Done in L1-sized blocks by a few short loops that touch at most three arrays each: a loop over
    six arrays needs more runtime alias checks than the compiler allows and would not vectorise.
    """
    bc1 = np.float32(1.0 - b1 ** step)
    rbc2 = np.float32(1.0 / math.sqrt(1.0 - b2 ** step))
    f_keep = np.float32(decay)
    f_new = np.float32(1.0 - decay)
    lam32 = np.float32(lam)
    c32 = np.float32(clip)
    b1f = np.float32(b1)
    b1c = np.float32(1.0 - b1)
    b2f = np.float32(b2)
    b2c = np.float32(1.0 - b2)
    eps32 = np.float32(eps)
    wd32 = np.float32(wd)
    mom = np.float32(momentum)
    lrp = np.float32(lr)
    step_a = lrp / bc1
    decay_w = np.float32(1.0) - lrp * wd32
    for lo in range(start, end, 1024):
        hi = min(end, lo + 1024)
        g = G[lo:hi]
        w = W[lo:hi]
        f = Fon[lo:hi]
        m1 = M1[lo:hi]
        m2 = M2[lo:hi]
        nb = hi - lo
        for p in range(nb):  # online Fisher from the data gradient
            f[p] = f_keep * f[p] + f_new * g[p] * g[p]
        if lam > 0.0:  # + EWC penalty gradient
            fa = Fanc[lo:hi]
            wa = Wanc[lo:hi]
            for p in range(nb):
                g[p] += lam32 * fa[p] * (w[p] - wa[p])
        if clip != 1.0:
            for p in range(nb):
                g[p] *= c32
        if opt == 0:  # AdamW: decoupled weight decay
            for p in range(nb):
                m1[p] = b1f * m1[p] + b1c * g[p]
            for p in range(nb):
                m2[p] = b2f * m2[p] + b2c * g[p] * g[p]
            for p in range(nb):
                w[p] = w[p] * decay_w - step_a * m1[p] / (math.sqrt(m2[p]) * rbc2 + eps32)
        elif opt == 1:  # Adam: L2 term in the gradient
            for p in range(nb):
                g[p] += wd32 * w[p]
            for p in range(nb):
                m1[p] = b1f * m1[p] + b1c * g[p]
            for p in range(nb):
                m2[p] = b2f * m2[p] + b2c * g[p] * g[p]
            for p in range(nb):
                w[p] = w[p] - step_a * m1[p] / (math.sqrt(m2[p]) * rbc2 + eps32)
        else:  # SGD, optional momentum (torch: buf = mu * buf + g, first buf = g)
            for p in range(nb):
                g[p] += wd32 * w[p]
            if mom > 0.0:
                if step == 1:
                    for p in range(nb):
                        m1[p] = g[p]
                else:
                    for p in range(nb):
                        m1[p] = mom * m1[p] + g[p]
                for p in range(nb):
                    w[p] -= lrp * m1[p]
            else:
                for p in range(nb):
                    w[p] -= lrp * g[p]


@njit(cache=True, parallel=True, fastmath=_FM_UPDATE)
def _update(W, G, M1, M2, Fon, Fanc, Wanc, lam, clip, lr, opt, b1, b2, eps, wd, momentum, step, decay,
            c_lo, c_hi, c_mult):
    """One optimiser step over every parameter (flat), in chunks (c_lo, c_hi) with one learning-rate
    multiplier each (1 for A, loraplus_ratio for B)."""
    for c in prange(c_lo.shape[0]):
        _update_range(W, G, M1, M2, Fon, Fanc, Wanc, c_lo[c], c_hi[c], lr * c_mult[c], clip, step, opt,
                      b1, b2, eps, wd, momentum, decay, lam)


@njit(cache=True, parallel=True, fastmath=_FM)
def _eval_module(X, R, rows, q, A, Bt, scale, Hs, Es, out_p):
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
                h[t] = s32 * _dot1(A[t], x)
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
def _row_sqnorms(R, out):
    for i in prange(R.shape[0]):
        acc = 0.0
        for o in range(R.shape[1]):
            acc += np.float64(R[i, o]) * R[i, o]
        out[i] = acc


@njit(cache=True)
def _qsum(q, rows):
    acc = 0.0
    for i in range(rows.shape[0]):
        acc += q[rows[i]]
    return acc


@njit(cache=True)
def _shuffle(idx, key):
    """In-place seeded Fisher-Yates shuffle (own RNG: bit-stable across numpy versions)."""
    for i in range(idx.shape[0] - 1, 0, -1):
        j = np.int64(_mix64(key + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)) % np.uint64(i + 1))
        t = idx[i]
        idx[i] = idx[j]
        idx[j] = t


# ----------------------------------------------------------------------------------------------
# helpers


def _finite(arr: np.ndarray) -> bool:
    a = np.ascontiguousarray(arr).reshape(-1)
    if a.dtype == np.float16:
        return not bool(np.any((a.view(np.uint16) & 0x7C00) == 0x7C00))
    return bool(_all_finite(a))


def _as_storage(name: str, arr) -> np.ndarray:
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


def _scale_of(scale, key: str) -> float:
    if isinstance(scale, dict):
        if key not in scale:
            raise ValueError(f"{key}: no scale given for this module")
        return float(scale[key])
    return float(scale)


class _Workspace:
    """Every buffer a run needs, allocated once: flat parameters and optimiser state, per-module
    per-thread partial gradients, row scratch, float16 conversion buffers."""

    def __init__(self, problems, A, B, scale, batch_rows: int, val_rows: int):
        self.T = max(1, numba.get_num_threads())
        self.keys = [p.key for p in problems]
        self.M = len(problems)
        self.shapes = {}
        sizes = []
        for p in problems:
            r, din = np.shape(A[p.key])
            dout = np.shape(B[p.key])[0]
            self.shapes[p.key] = (r, din, dout)
            sizes.append(r * (din + dout))
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        P = int(self.offsets[-1])
        self.W = np.empty(P, np.float32)
        self.G = np.zeros(P, np.float32)
        self.M1 = np.zeros(P, np.float32)
        self.M2 = np.zeros(P, np.float32)
        self.scales = {p.key: _scale_of(scale, p.key) for p in problems}
        self.views = {}
        for k, p in enumerate(problems):
            r, din, dout = self.shapes[p.key]
            lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
            Wm = self.W[lo:hi]
            Gm = self.G[lo:hi]
            Am = Wm[: r * din].reshape(r, din)
            Btm = Wm[r * din:].reshape(r, dout)
            Am[...] = np.asarray(A[p.key], np.float32)
            Btm[...] = np.asarray(B[p.key], np.float32).T
            self.views[p.key] = (lo, hi, Wm, Gm, Am, Btm)
        r_max = max(r for r, _, _ in self.shapes.values())
        rows_max = max(batch_rows, 1)
        # row scratch, one slab per thread (a thread works on one module at a time)
        self.H = np.empty((self.T, rows_max, r_max), np.float32)
        self.U = np.empty((self.T, rows_max, r_max), np.float32)
        self.RB = np.empty((self.T, rows_max, r_max), np.float32)
        self.WH = np.empty((self.T, rows_max, r_max), np.float32)
        self.GH = np.empty((self.T, rows_max, r_max), np.float32)
        self.assign, self.aoff = self._schedule()
        self.a_len = np.array([self.shapes[k][0] * self.shapes[k][1] for k in self.keys], np.int64)
        self.hp_dummy = np.zeros(8, np.float64)
        self.loraplus = 1.0
        # per-module partials (combined after every module ran)
        self.gA_p = {k: np.empty((self.T, r, din), np.float32) for k, (r, din, dout) in self.shapes.items()}
        self.gBt_p = {k: np.empty((self.T, r, dout), np.float32) for k, (r, din, dout) in self.shapes.items()}
        self.S_p = {k: np.empty((self.T, r, r), np.float32) for k, (r, din, dout) in self.shapes.items()}
        self.Stot = {k: np.empty((r, r), np.float32) for k, (r, _, _) in self.shapes.items()}
        self.BtB = {k: np.empty((r, r), np.float32) for k, (r, _, _) in self.shapes.items()}
        rs = [self.shapes[k][0] for k in self.keys]
        self.roff = np.concatenate([[0], np.cumsum(rs)]).astype(np.int64)
        self.goff = np.concatenate([[0], np.cumsum([2 * r for r in rs])]).astype(np.int64)
        self.loss_pm = np.empty((self.M, self.T), np.float64)
        self.sq_rows = np.empty(int(self.goff[-1]), np.float64)
        self.pen_rows = np.empty(int(self.goff[-1]), np.float64)
        self.inv_out = np.array([1.0 / self.shapes[k][2] for k in self.keys], np.float64)
        self.scale_arr = np.array([self.scales[k] for k in self.keys], np.float64)
        # evaluation scratch
        self.Hs = np.empty((self.T, r_max), np.float32)
        self.Es = np.empty((self.T, max(d for _, _, d in self.shapes.values())), np.float32)
        self.loss_p = np.empty(self.T, np.float64)
        self.empty32 = np.zeros(1, np.float32)
        self.set_loraplus(1.0)
        self.conv_rows = max(batch_rows, val_rows, 1)
        self.conv = {}

    def _schedule(self):
        """Split the modules over the threads (longest first onto the least loaded thread); use the
        by-module schedule when the split is within 15% of perfect, else split rows."""
        if self.T == 1 or self.M < self.T:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cost = [self.shapes[k][0] * (self.shapes[k][1] + self.shapes[k][2]) for k in self.keys]
        loads = [0] * self.T
        owned = [[] for _ in range(self.T)]
        for m in sorted(range(self.M), key=lambda i: -cost[i]):
            t = loads.index(min(loads))
            loads[t] += cost[m]
            owned[t].append(m)
        if max(loads) > 1.15 * sum(loads) / self.T:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        assign = np.array([m for o in owned for m in sorted(o)], np.int64)
        aoff = np.concatenate([[0], np.cumsum([len(o) for o in owned])]).astype(np.int64)
        return assign, aoff

    def set_loraplus(self, ratio: float, chunk: int = 8192) -> None:
        """Update chunks of the flat parameters, each inside one A or one B^T block, with that block's
        learning-rate multiplier (LoRA+: B's is `ratio`)."""
        lo_, hi_, mult = [], [], []
        for k, key in enumerate(self.keys):
            r, din, _ = self.shapes[key]
            start, mid, end = int(self.offsets[k]), int(self.offsets[k]) + r * din, int(self.offsets[k + 1])
            for a, b, m in ((start, mid, 1.0), (mid, end, float(ratio))):
                for c in range(a, b, chunk):
                    lo_.append(c)
                    hi_.append(min(b, c + chunk))
                    mult.append(m)
        self.loraplus = float(ratio)
        self.c_lo = np.array(lo_, np.int64)
        self.c_hi = np.array(hi_, np.int64)
        self.c_mult = np.array(mult, np.float64)

    def kit(self, Xs, Rs, rsqs, Fanc, Wanc) -> tuple:
        """The typed lists `_grad_step` takes, built once per run (the arrays change in place)."""
        def tl(items):
            out = List()
            for it in items:
                out.append(it)
            return out

        views = [self.views[k] for k in self.keys]
        lam_on = Fanc.shape[0] > 1
        return (tl(Xs), tl(Rs), tl(rsqs), tl([v[4] for v in views]), tl([v[5] for v in views]),
                tl([self.BtB[k] for k in self.keys]), tl([self.gA_p[k] for k in self.keys]),
                tl([self.gBt_p[k] for k in self.keys]), tl([self.S_p[k] for k in self.keys]),
                tl([self.Stot[k] for k in self.keys]), tl([v[2] for v in views]), tl([v[3] for v in views]),
                tl([Fanc[v[0]:v[1]] if lam_on else self.empty32 for v in views]),
                tl([Wanc[v[0]:v[1]] if lam_on else self.empty32 for v in views]))

    def grad_step(self, kit, rows, q, qsum, lam):
        """Gradients of every module into self.G; returns (loss, squared norm, EWC penalty sum)."""
        e = self.empty32
        return _grad_step(*kit, self.H, self.RB, self.WH, self.U, self.GH, rows, q, 1.0 / (self.M * qsum),
                          self.inv_out, self.scale_arr, lam, self.roff, self.goff, self.loss_pm, self.sq_rows,
                          self.pen_rows, self.assign, self.aoff, False, e, e, e, e, e, e, e, self.offsets,
                          self.a_len, 1.0, 0.0, 1, 0, self.hp_dummy)

    def f32_rows(self, arr: np.ndarray, rows: np.ndarray, tag) -> np.ndarray:
        """Gather `rows` of `arr` into the first rows of a preallocated float32 buffer (float16 is
        converted); returns the whole buffer."""
        buf = self.f32_buffer(arr, tag)
        n = rows.shape[0]
        half = self.conv[tag][0]
        if half is not None:
            np.take(arr, rows, axis=0, out=half[:n])
            np.copyto(buf[:n], half[:n])
        else:
            np.take(arr, rows, axis=0, out=buf[:n])
        return buf

    def f32_buffer(self, arr: np.ndarray, tag) -> np.ndarray:
        if tag not in self.conv:
            half = np.empty((self.conv_rows, arr.shape[1]), np.float16) if arr.dtype == np.float16 else None
            self.conv[tag] = (half, np.empty((self.conv_rows, arr.shape[1]), np.float32))
        return self.conv[tag][1]


def _check_problems(problems, A, B, q_train, q_val):
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
            if not _finite(np.asarray(arr, np.float32)):
                raise ValueError(f"{p.key}: initial {name} contains NaN or infinite values")
    for name, qq in (("q_train", q_train), ("q_val", q_val)):
        if qq is None:
            continue
        qq = np.asarray(qq)
        if qq.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D quality vector, got shape {qq.shape}")
        if not _finite(qq.astype(np.float32)):
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


def _prepare(problems):
    """Storage dtypes (float16/float32 kept, anything else float32), NaN checks naming the tensor."""
    out = []
    cache: dict[int, np.ndarray] = {}
    for p in problems:
        arrays = []
        for name in ("X_train", "R_train", "X_val", "R_val"):
            arr = getattr(p, name)
            if id(arr) not in cache:
                st = _as_storage(f"{p.key}: {name}", arr)
                if not _finite(st):
                    raise ValueError(f"{p.key}: {name} contains NaN or infinite values")
                cache[id(arr)] = st
            arrays.append(cache[id(arr)])
        out.append(ModuleProblem(p.key, *arrays))
    return out


def _module_sums(ws: _Workspace, problems, q, split: str, W_override=None) -> dict[str, float]:
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
                total += _eval_module(Xb, Rb, local, q32[c0:c0 + rows.shape[0]], Am, Btm, ws.scales[p.key],
                                      ws.Hs, ws.Es, ws.loss_p)
        else:
            rows = np.arange(n, dtype=np.int64)
            total = _eval_module(X, R, rows, q32, Am, Btm, ws.scales[p.key], ws.Hs, ws.Es, ws.loss_p)
        out[p.key] = total / (Q * dout) if Q > 0 else float("nan")
    return out


# ----------------------------------------------------------------------------------------------
# public API


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
    prob = ModuleProblem("m", X, R, X[:1], R[:1])
    ws = _Workspace([prob], {"m": A}, {"m": B}, float(scale), n, 1)
    r, din, dout = ws.shapes["m"]
    Gm = ws.views["m"][3]
    rsq = np.empty(n, np.float64)
    _row_sqnorms(R, rsq)
    kit = ws.kit([X], [R], [rsq], ws.empty32, ws.empty32)
    qsum = float(np.sum(q, dtype=np.float64))
    ws.M = int(n_modules)  # the loss is L's share: 1 / (n_modules * sum q * out)
    loss, _, _ = ws.grad_step(kit, np.arange(n, dtype=np.int64), q, qsum, 0.0)
    return float(loss), Gm[: r * din].reshape(r, din).copy(), np.ascontiguousarray(Gm[r * din:].reshape(r, dout).T)


def evaluate_modules(problems, A, B, scale, q, split: str = "val") -> dict[str, float]:
    """Normalised weighted loss per module (sum q ||s B A x - r||^2 / (sum q * out))."""
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    qq = np.asarray(q, np.float32)
    if split == "val":
        _check_problems(problems, A, B, None, qq)
    else:
        _check_problems(problems, A, B, qq, None)
    probs = _prepare(problems)
    ws = _Workspace(probs, A, B, scale, 256, 256)
    return _module_sums(ws, probs, qq, split)


def evaluate(problems, A, B, scale, q, split: str = "val") -> float:
    """The reported loss: mean over modules of the normalised weighted loss (see module doc)."""
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


def train(
    problems: list[ModuleProblem],
    A: dict[str, np.ndarray],
    B: dict[str, np.ndarray],
    scale: float | dict[str, float],
    q_train: np.ndarray,
    q_val: np.ndarray,
    settings: TrainSettings | None = None,
    ewc: EwcState | None = None,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train the adapters of `problems` from the initial A/B (not modified); return the best checkpoint.

    Raises ValueError before any work for bad settings, mismatched shapes, NaN/inf in any tensor,
    or a quality threshold that drops every training example. `progress(row)` is called with each
    history row as it is recorded.
    """
    settings = (settings or TrainSettings()).validate()
    previous = numba.get_num_threads()
    if settings.num_threads:
        numba.set_num_threads(settings.num_threads)
    try:
        return _train(problems, A, B, scale, q_train, q_val, settings, ewc, progress)
    finally:
        numba.set_num_threads(previous)


def _train(
    problems: list[ModuleProblem],
    A: dict[str, np.ndarray],
    B: dict[str, np.ndarray],
    scale: float | dict[str, float],
    q_train: np.ndarray,
    q_val: np.ndarray,
    settings: TrainSettings | None = None,
    ewc: EwcState | None = None,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    q_train = np.asarray(q_train)
    q_val = np.asarray(q_val)
    _check_problems(problems, A, B, q_train, q_val)
    probs = _prepare(problems)

    keep = np.flatnonzero(q_train >= settings.quality_threshold).astype(np.int64)
    if keep.size == 0:
        raise ValueError(f"quality_threshold {settings.quality_threshold} drops all {q_train.size} training "
                         f"examples (max quality {float(q_train.max()) if q_train.size else float('nan'):.4g})")
    if float(np.sum(q_train[keep], dtype=np.float64)) <= 0.0:
        raise ValueError("quality_threshold: every kept training example has quality 0")

    bs = min(int(settings.batch_size), keep.size)
    steps_per_epoch = (keep.size + bs - 1) // bs
    total_steps = settings.epochs * steps_per_epoch
    lrs = lr_table(settings.schedule, total_steps, settings.learning_rate, settings.warmup_steps,
                   **settings.schedule_params())

    ws = _Workspace(probs, A, B, scale, bs, len(q_val))
    q_tr32 = np.ascontiguousarray(q_train, np.float32)

    ws.set_loraplus(settings.loraplus_ratio)  # LoRA+: B's learning rate is lr * ratio

    # EWC anchor and online Fisher
    lam = 0.0
    P = ws.W.shape[0]
    Fanc = ws.empty32
    Wanc = ws.empty32
    Fon = np.zeros(P, np.float32)
    fisher_from_zero = True
    if ewc is not None:
        Fanc = np.zeros(P, np.float32)
        Wanc = ws.W.copy()
        lam = float(settings.ewc_lambda)
        for k, p in enumerate(probs):
            if p.key not in ewc.fisher:
                continue
            r, din, dout = ws.shapes[p.key]
            lo, hi = int(ws.offsets[k]), int(ws.offsets[k + 1])
            fa, fb = ewc.fisher[p.key]
            for name, arr, shape in (("fisher A", fa, (r, din)), ("fisher B", fb, (dout, r)),
                                     ("anchor A", ewc.A.get(p.key), (r, din)), ("anchor B", ewc.B.get(p.key), (dout, r))):
                if arr is None or np.shape(arr) != shape:
                    raise ValueError(f"{p.key}: EWC {name} has shape {np.shape(arr)}, expected {shape}")
                if not _finite(np.asarray(arr, np.float32)):
                    raise ValueError(f"{p.key}: EWC {name} contains NaN or infinite values")
            Fanc[lo:lo + r * din] = np.asarray(fa, np.float32).reshape(-1)
            Fanc[lo + r * din:hi] = np.asarray(fb, np.float32).T.reshape(-1)
            Wanc[lo:lo + r * din] = np.asarray(ewc.A[p.key], np.float32).reshape(-1)
            Wanc[lo + r * din:hi] = np.asarray(ewc.B[p.key], np.float32).T.reshape(-1)
            if np.any(Fanc[lo:hi] < 0):
                raise ValueError(f"{p.key}: EWC fisher has negative entries")
        Fon[:] = Fanc
        fisher_from_zero = not bool(np.any(Fanc))
        if lam == 0.0:
            Fanc = ws.empty32
            Wanc = ws.empty32

    # per-problem squared row norms of the training targets (float64, once)
    rsq = {}
    for p in probs:
        if id(p.R_train) in rsq:
            continue
        out = np.empty(p.R_train.shape[0], np.float64)
        if p.R_train.dtype == np.float16:
            for c0 in range(0, out.shape[0], 1024):
                blk = p.R_train[c0:c0 + 1024].astype(np.float32)
                _row_sqnorms(blk, out[c0:c0 + blk.shape[0]])
        else:
            _row_sqnorms(p.R_train, out)
        rsq[id(p.R_train)] = out

    opt = _OPT_CODE[settings.optimizer]
    b1, b2 = (float(b) for b in settings.betas)
    decay = float(settings.fisher_decay)
    max_norm = float(settings.max_grad_norm)
    history: list[dict] = []

    def record(row: dict) -> None:
        history.append(row)
        if progress is not None:
            progress(dict(row))

    def val_loss() -> float:
        return float(np.mean(list(_module_sums(ws, probs, q_val, "val").values())))

    q_keep = q_train.astype(np.float32).copy()
    q_keep[np.setdiff1d(np.arange(q_train.size), keep)] = 0.0  # dropped rows weigh nothing

    init_val = val_loss()
    init_train = float(np.mean(list(_module_sums(ws, probs, q_keep, "train").values())))
    record({"epoch": 0, "step": 0, "train_loss": init_train, "val_loss": init_val, "lr": 0.0,
            "ewc_penalty": 0.0, "kind": "init"})
    best_val = init_val
    ref_val = init_val
    best_W = ws.W.copy()
    best_epoch = 0
    best_step = 0
    wait = 0
    stopped = False
    step = 0
    epoch = 0
    order = keep.copy()
    run_loss = 0.0
    run_n = 0
    last_pen = 0.0
    lr = 0.0

    def evaluation(kind: str) -> bool:
        nonlocal best_val, ref_val, best_W, best_epoch, best_step, wait, run_loss, run_n
        v = val_loss()
        if not math.isfinite(v):
            raise FloatingPointError(f"validation loss became {v} at step {step}: lower the learning_rate")
        tl = run_loss / run_n if run_n else float("nan")
        run_loss, run_n = 0.0, 0
        record({"epoch": epoch, "step": step, "train_loss": tl, "val_loss": v, "lr": lr,
                "ewc_penalty": last_pen, "kind": kind})
        if v < best_val:
            best_val = v
            best_W[:] = ws.W
            best_epoch = epoch
            best_step = step
        if v < ref_val - settings.min_delta:
            ref_val = v
            wait = 0
            return False
        wait += 1
        return wait >= max(1, settings.patience)

    # what the step kernel reads: the arrays themselves (float32 storage, rows read in place) or
    # float32 buffers that each minibatch is gathered and converted into (float16 storage)
    f16 = any(p.X_train.dtype == np.float16 or p.R_train.dtype == np.float16 for p in probs)
    local_rows = np.arange(bs, dtype=np.int64)
    q_batch = np.empty(bs, np.float32)
    if f16:
        rsq_batch = {k: np.empty(bs, np.float64) for k in rsq}
        kit = ws.kit([ws.f32_buffer(p.X_train, ("x", id(p.X_train))) for p in probs],
                     [ws.f32_buffer(p.R_train, ("r", id(p.R_train))) for p in probs],
                     [rsq_batch[id(p.R_train)] for p in probs], Fanc, Wanc)
        x_sources = {id(p.X_train): p.X_train for p in probs}
        r_sources = {id(p.R_train): p.R_train for p in probs}
    else:
        kit = ws.kit([p.X_train for p in probs], [p.R_train for p in probs], [rsq[id(p.R_train)] for p in probs],
                     Fanc, Wanc)

    hp = np.array([b1, b2, float(settings.eps), float(settings.weight_decay), float(settings.momentum), decay,
                   lam, max_norm], np.float64)
    every = int(settings.eval_every_steps)

    def python_steps(b_from: int, b_to: int):
        """The float16 path: gather + convert each minibatch in numpy, then the same kernels."""
        st, loss_sum, count, pen_last, lr_last = step, 0.0, 0, 0.0, 0.0
        for bi in range(b_from, b_to):
            rows = order[bi * bs:(bi + 1) * bs]
            nb = rows.shape[0]
            qb = _qsum(q_tr32, rows)
            lr_last = float(lrs[st])
            st += 1
            if qb <= 0.0:
                continue
            np.take(q_tr32, rows, out=q_batch[:nb])
            for key, arr in x_sources.items():
                ws.f32_rows(arr, rows, ("x", key))
            for key, arr in r_sources.items():
                ws.f32_rows(arr, rows, ("r", key))
                np.take(rsq[key], rows, out=rsq_batch[key][:nb])
            loss, sq, pen = ws.grad_step(kit, local_rows[:nb], q_batch, qb, lam)
            if not math.isfinite(loss) or not math.isfinite(sq):
                return st, loss_sum, count, pen_last, lr_last, 1
            clip = min(1.0, max_norm / (math.sqrt(sq) + 1e-6)) if max_norm > 0 else 1.0
            _update(ws.W, ws.G, ws.M1, ws.M2, Fon, Fanc, Wanc, lam, clip, lr_last, opt, b1, b2,
                    float(settings.eps), float(settings.weight_decay), float(settings.momentum),
                    st, decay, ws.c_lo, ws.c_hi, ws.c_mult)
            loss_sum += loss
            count += 1
            pen_last = 0.5 * lam * pen
        return st, loss_sum, count, pen_last, lr_last, 0

    for epoch in range(1, settings.epochs + 1):
        _shuffle(order, np.uint64(_mix64(np.uint64((settings.seed * 1000003 + epoch) & _MASK))))
        b = 0
        while b < steps_per_epoch:
            b_to = steps_per_epoch
            if every:
                b_to = min(b_to, b + every - step % every)
            if f16:
                out = python_steps(b, b_to)
            else:
                out = _run_steps(*kit, ws.H, ws.RB, ws.WH, ws.U, ws.GH, ws.inv_out, ws.scale_arr, ws.roff, ws.goff,
                                 ws.loss_pm, ws.sq_rows, ws.pen_rows, ws.assign, ws.aoff, order, b, b_to, bs, q_tr32, lrs, step,
                                 ws.W, ws.G, ws.M1, ws.M2, Fon, Fanc, Wanc, opt, hp, ws.c_lo, ws.c_hi, ws.c_mult,
                                 ws.offsets, ws.a_len, ws.loraplus)
            step, loss_sum, count, pen_last, lr_last, status = out
            if status:
                raise FloatingPointError(f"training loss stopped being finite at step {step}: lower the learning_rate")
            run_loss += loss_sum
            run_n += count
            last_pen = pen_last
            lr = lr_last
            b = b_to
            if every and step % every == 0 and b < steps_per_epoch:
                if evaluation("step"):
                    stopped = True
                    break
        if stopped:
            break
        if evaluation("epoch"):
            stopped = True
            break
    epochs_run = epoch

    # the best checkpoint, back in the caller's layout
    A_out, B_out, fisher = {}, {}, {}
    fcorr = 1.0 / (1.0 - decay ** step) if (fisher_from_zero and step > 0 and decay > 0) else 1.0
    for k, p in enumerate(probs):
        r, din, dout = ws.shapes[p.key]
        lo, hi = int(ws.offsets[k]), int(ws.offsets[k + 1])
        seg = best_W[lo:hi]
        A_out[p.key] = seg[: r * din].reshape(r, din).copy()
        B_out[p.key] = np.ascontiguousarray(seg[r * din:].reshape(r, dout).T)
        fseg = Fon[lo:hi] * np.float32(fcorr)
        fisher[p.key] = (fseg[: r * din].reshape(r, din).copy(), np.ascontiguousarray(fseg[r * din:].reshape(r, dout).T))
    train_loss = float(np.mean(list(_module_sums(ws, probs, q_keep, "train", W_override=best_W).values())))
    return TrainResult(A=A_out, B=B_out, history=history, epochs_run=epochs_run, early_stopped=stopped,
                       best_epoch=best_epoch, train_loss=train_loss, val_loss=best_val, fisher=fisher,
                       steps=step, best_step=best_step, n_train_used=int(keep.size))
