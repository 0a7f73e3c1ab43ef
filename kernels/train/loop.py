"""The training loop: epochs of shuffled minibatches (`steps.run_steps`), evaluations at epoch
ends (and every `eval_every_steps`), early stopping, the best checkpoint, the EWC anchor and the
online Fisher handed back."""

from __future__ import annotations

import math
from typing import Callable

import numba
import numpy as np

from ruv_kernels.finite import is_finite
from ruv_kernels.train.evaluation import mean_loss, target_sqnorms
from ruv_kernels.train.problems import check_problems, prepare
from ruv_kernels.train.results import EwcState, ModuleProblem, TrainResult
from ruv_kernels.train.settings import TrainSettings
from ruv_kernels.train.steps import epoch_key, run_steps, shuffle
from ruv_kernels.train.bundles import Hyper
from ruv_kernels.train.workspace import Workspace


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
        return _Run(problems, A, B, scale, q_train, q_val, settings, ewc, progress).run()
    finally:
        numba.set_num_threads(previous)


def kept_rows(q_train: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the training rows at or above the quality threshold (ValueError if none count)."""
    keep = np.flatnonzero(q_train >= threshold).astype(np.int64)
    if keep.size == 0:
        raise ValueError(f"quality_threshold {threshold} drops all {q_train.size} training "
                         f"examples (max quality {float(q_train.max()) if q_train.size else float('nan'):.4g})")
    if float(np.sum(q_train[keep], dtype=np.float64)) <= 0.0:
        raise ValueError("quality_threshold: every kept training example has quality 0")
    return keep


def load_anchor(ws: Workspace, probs, ewc: EwcState) -> None:
    """Check the EWC anchor of every module it names and copy it into the workspace."""
    for p in probs:
        if p.key not in ewc.fisher:
            continue
        r, din, dout = ws.shapes[p.key]
        fa, fb = ewc.fisher[p.key]
        for name, arr, shape in (("fisher A", fa, (r, din)), ("fisher B", fb, (dout, r)),
                                 ("anchor A", ewc.A.get(p.key), (r, din)), ("anchor B", ewc.B.get(p.key), (dout, r))):
            if arr is None or np.shape(arr) != shape:
                raise ValueError(f"{p.key}: EWC {name} has shape {np.shape(arr)}, expected {shape}")
            if not is_finite(np.asarray(arr, np.float32)):
                raise ValueError(f"{p.key}: EWC {name} contains NaN or infinite values")
        if np.any(np.asarray(fa, np.float32) < 0) or np.any(np.asarray(fb, np.float32) < 0):
            raise ValueError(f"{p.key}: EWC fisher has negative entries")
        ws.set_anchor(p.key, fa, fb, ewc.A[p.key], ewc.B[p.key])


class _Run:
    """One call of `train`: the checked inputs, the workspace, and the evaluation bookkeeping."""

    def __init__(self, problems, A, B, scale, q_train, q_val, settings: TrainSettings, ewc, progress):
        q_train = np.asarray(q_train)
        self.q_val = np.asarray(q_val)
        check_problems(problems, A, B, q_train, self.q_val)
        self.probs = prepare(problems)
        self.settings = settings
        self.progress = progress
        self.keep = kept_rows(q_train, settings.quality_threshold)
        self.bs = min(int(settings.batch_size), self.keep.size)
        self.steps_per_epoch = (self.keep.size + self.bs - 1) // self.bs
        self.lrs = settings.learning_rates(settings.epochs * self.steps_per_epoch)
        self.ws = Workspace(self.probs, A, B, scale, self.bs, len(self.q_val), settings.loraplus_ratio)
        self.q_tr32 = np.ascontiguousarray(q_train, np.float32)
        self.q_keep = q_train.astype(np.float32).copy()
        self.q_keep[np.setdiff1d(np.arange(q_train.size), self.keep)] = 0.0  # dropped rows weigh nothing
        lam = 0.0
        self.fisher_from_zero = True
        if ewc is not None:
            self.ws.Wanc[:] = self.ws.W  # modules the anchor does not name: anchored where they start
            load_anchor(self.ws, self.probs, ewc)
            self.ws.Fon[:] = self.ws.Fanc  # the online Fisher starts from the anchor's
            self.fisher_from_zero = not bool(np.any(self.ws.Fanc))
            lam = float(settings.ewc_lambda)
        self.hyper = Hyper.of(settings, lam)
        rsq = {}
        for p in self.probs:
            if id(p.R_train) not in rsq:
                rsq[id(p.R_train)] = target_sqnorms(p.R_train)
        self.mods, self.gather = self.ws.gather(self.probs, rsq, settings.dropout, settings.seed)
        self.history: list[dict] = []
        self.step = 0
        self.epoch = 0
        self.run_loss, self.run_n, self.last_pen, self.lr = 0.0, 0, 0.0, 0.0

    def record(self, row: dict) -> None:
        self.history.append(row)
        if self.progress is not None:
            self.progress(dict(row))

    def steps(self, order: np.ndarray, b_from: int, b_to: int) -> None:
        ws = self.ws
        out = run_steps(self.mods, ws.scratch, ws.layout, ws.state, self.hyper, self.gather, order, b_from, b_to,
                        self.bs, self.q_tr32, self.lrs, self.step, ws.by_rows)
        self.step, loss_sum, count, pen_last, lr_last, status = out
        if status:
            raise FloatingPointError(f"training loss stopped being finite at step {self.step}: lower the learning_rate")
        self.run_loss += loss_sum
        self.run_n += count
        self.last_pen = pen_last
        self.lr = lr_last

    def evaluation(self, kind: str) -> bool:
        """Record a history row; keep the best weights; True when patience has run out."""
        v = mean_loss(self.ws, self.probs, self.q_val, "val")
        if not math.isfinite(v):
            raise FloatingPointError(f"validation loss became {v} at step {self.step}: lower the learning_rate")
        tl = self.run_loss / self.run_n if self.run_n else float("nan")
        self.run_loss, self.run_n = 0.0, 0
        self.record({"epoch": self.epoch, "step": self.step, "train_loss": tl, "val_loss": v, "lr": self.lr,
                     "ewc_penalty": self.last_pen, "kind": kind})
        if v < self.best_val:
            self.best_val = v
            self.best_W[:] = self.ws.W
            self.best_epoch = self.epoch
            self.best_step = self.step
        if v < self.ref_val - self.settings.min_delta:
            self.ref_val = v
            self.wait = 0
            return False
        self.wait += 1
        return self.wait >= max(1, self.settings.patience)

    def epochs(self) -> bool:
        """Run the epochs; True when early stopping ended them."""
        s = self.settings
        every = int(s.eval_every_steps)
        order = self.keep.copy()
        for self.epoch in range(1, s.epochs + 1):
            shuffle(order, epoch_key(s.seed, self.epoch))
            b = 0
            while b < self.steps_per_epoch:
                b_to = self.steps_per_epoch
                if every:
                    b_to = min(b_to, b + every - self.step % every)
                self.steps(order, b, b_to)
                b = b_to
                if every and self.step % every == 0 and b < self.steps_per_epoch and self.evaluation("step"):
                    return True
            if self.evaluation("epoch"):
                return True
        return False

    def run(self) -> TrainResult:
        ws = self.ws
        init_val = mean_loss(ws, self.probs, self.q_val, "val")
        init_train = mean_loss(ws, self.probs, self.q_keep, "train")
        self.record({"epoch": 0, "step": 0, "train_loss": init_train, "val_loss": init_val, "lr": 0.0,
                     "ewc_penalty": 0.0, "kind": "init"})
        self.best_val = self.ref_val = init_val
        self.best_W = ws.W.copy()
        self.best_epoch = self.best_step = self.wait = 0
        stopped = self.epochs()
        return self.result(stopped)

    def result(self, stopped: bool) -> TrainResult:
        """The best checkpoint and the online Fisher, back in the caller's layout."""
        ws = self.ws
        decay = float(self.settings.fisher_decay)
        step = self.step
        fcorr = 1.0 / (1.0 - decay ** step) if (self.fisher_from_zero and step > 0 and decay > 0) else 1.0
        A_out, B_out, fisher = {}, {}, {}
        for k, p in enumerate(self.probs):
            r, din, dout = ws.shapes[p.key]
            lo, hi = int(ws.offsets[k]), int(ws.offsets[k + 1])
            seg = self.best_W[lo:hi]
            A_out[p.key] = seg[: r * din].reshape(r, din).copy()
            B_out[p.key] = np.ascontiguousarray(seg[r * din:].reshape(r, dout).T)
            fseg = ws.Fon[lo:hi] * np.float32(fcorr)
            fisher[p.key] = (fseg[: r * din].reshape(r, din).copy(),
                             np.ascontiguousarray(fseg[r * din:].reshape(r, dout).T))
        train_loss = mean_loss(ws, self.probs, self.q_keep, "train", W_override=self.best_W)
        return TrainResult(A=A_out, B=B_out, history=self.history, epochs_run=self.epoch, early_stopped=stopped,
                           best_epoch=self.best_epoch, train_loss=train_loss, val_loss=self.best_val, fisher=fisher,
                           steps=step, best_step=self.best_step, n_train_used=int(self.keep.size))
