"""What a training run takes and gives back: the per-module problems, the EWC anchor, the result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
