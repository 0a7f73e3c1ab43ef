"""Training settings and their validation (the owner maps the pydantic/Dagster config onto them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numba
import numpy as np

from ruv_kernels.schedules import lr_table, resolve_schedule, schedule_name

OPTIMIZERS = ("adamw", "adam", "sgd")
OPT_CODE = {"adamw": 0, "adam": 1, "sgd": 2}  # what the optimiser kernel branches on


@dataclass
class TrainSettings:
    """Training configuration (the owner maps the pydantic/Dagster config onto it).

    Defaults are tuned so that the synthetic coder/security/reviewer presets reach the noise floor
    (tests/kernels/test_train_acceptance.py): AdamW lr 0.03 with cosine decay over 40 epochs of
    batch 32, 20 warmup steps. lr was 0.02 until the optimality certificate showed security's
    checkpoint 1.09% above its rank-r training optimum; at 0.03 all five presets are within 1%
    (security 0.95%, coder 0.81%, architect 0.51%, reviewer 0.59%, researcher 0.35%; BENCHMARKS.md),
    where 50 or 60 epochs would cost 25-50% more time (and 60 early-stops researcher at 2.1%).

    Early stopping: training stops once `patience` evaluations in a row (each epoch end, plus
    every `eval_every_steps` steps if > 0) did not improve the validation loss by more than
    `min_delta` (absolute) over the last such improvement; patience 0 behaves like 1 (as in Keras).
    The returned checkpoint is the lowest validation loss seen, whatever min_delta.
    `max_grad_norm` 0 disables clipping. Schedule parameters are those of kernels.schedules
    (`gamma` None = the schedule's own default). `ewc_lambda` only acts when an EwcState is passed
    to `train`; it multiplies a Fisher made of squared gradients of L, so its useful size depends on
    the data's units (on the synthetic tasks ~1-100 trades old task against new; 2000 all but
    freezes the anchored weights). `num_threads` 0 = NUMBA_NUM_THREADS; use 1 when several
    trainings share the cores. `dropout` p: inverted dropout on the LoRA input during training
    steps, as PEFT's `lora_dropout` (each entry of a minibatch's X zeroed with probability p, the
    rest scaled by 1/(1-p), seeded by `seed` and the step); evaluations see the clean inputs.
    """

    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 0.03
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
    dropout: float = 0.0

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
        resolve_schedule(self.schedule, 1, float(self.learning_rate), 0, self.schedule_params())
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
        if not 0.0 <= num("dropout") < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
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

    def learning_rates(self, total_steps: int) -> np.ndarray:
        """The learning rate of every step of a run of `total_steps` steps."""
        return lr_table(self.schedule, total_steps, self.learning_rate, self.warmup_steps, **self.schedule_params())
