"""Scores of an adapter on a task dataset: weighted validation loss, the zero adapter's, and the
learned delta's relative error against the known truth (synthetic data only)."""

import numpy as np

from ruv_kernels.adapter import LoraAdapter
from ruv_kernels.train import ModuleProblem, build_problems, evaluate, zero_adapter_loss
from ruv_resources.dataset_format import Dataset


def problems_for(dataset: Dataset, keys: list[str]) -> list[ModuleProblem]:
    """One regression problem per target module, train/val rows selected by the split; modules that
    read the same input share one gathered copy of it."""
    missing = [k for k in keys if k not in dataset.targets]
    if missing:
        raise ValueError(f"dataset has no targets for {', '.join(missing)}; it holds {', '.join(sorted(dataset.targets))}")
    return build_problems(dataset.inputs, {k: dataset.targets[k] for k in keys}, dataset.train_idx, dataset.val_idx,
                          input_key=dataset.input_of.__getitem__)


def validation_loss(adapter: LoraAdapter, problems: list[ModuleProblem], q_val: np.ndarray) -> float:
    """Quality-weighted val MSE per output element, averaged over the problems' modules (see
    ruv_kernels.train); build the problems once with `problems_for` and score several adapters on them."""
    keys = [p.key for p in problems]
    A = {k: adapter.A[k].astype(np.float32) for k in keys}
    B = {k: adapter.B[k].astype(np.float32) for k in keys}
    return float(evaluate(problems, A, B, adapter.scale, q_val))


def zero_validation_loss(problems: list[ModuleProblem], q_val: np.ndarray) -> float:
    """The zero adapter's (B = 0) validation loss: the baseline every adapter must beat."""
    return float(zero_adapter_loss(problems, q_val))


def delta_rel_error(adapter: LoraAdapter, dataset: Dataset) -> float | None:
    """||learned - true||_F / ||true||_F over all modules together, or None without a truth."""
    if not dataset.truth:
        return None
    num = den = 0.0
    for key, (U, V) in dataset.truth.items():
        true = U.astype(np.float64) @ V.astype(np.float64)
        learned = adapter.delta(key).astype(np.float64) if key in adapter.A else 0.0
        num += float(np.sum((learned - true) ** 2))
        den += float(np.sum(true**2))
    return float(np.sqrt(num / den)) if den > 0 else 0.0
