"""The closed form in `trained_adapter`: the dataset's sufficient statistics, the exact solver
(`solver: exact`, optionally consolidated against the last version's stored Gram) and the
optimality certificate that every trained checkpoint carries, whatever trained it.

The statistics are those of the same weighted objective the SGD path minimises: the training
rows at or above the quality threshold weighted by their quality, and every validation row
weighted by its quality (kernels.train's L). They are read from the dataset in place (float16
included); modules reading one input share one Gram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruv_kernels.exact import (ExactSolveError, certificate, consolidated_stats, consolidation_offset,
                           dataset_rows, dataset_stats, dropout_ridge, loss_from_factors, resolve_precision, ridge_factor,
                           solve_adapter, solve_reduced_rank, split_weights)
from ruv_resources.dataset_format import Dataset


@dataclass
class Statistics:
    train: dict          # {module key: ModuleStats} of the quality-filtered training split
    val: dict            # {module key: ValidationData}: the validation rows, by reference
    precision: str       # of the training statistics: "float64" or "mixed" ("auto" resolved)


def statistics(dataset: Dataset, keys: list[str], quality_threshold: float, *, precision: str = "auto") -> Statistics:
    """`precision` of the Gram and cross terms (`ruv_kernels.exact.accumulate`): "auto" computes as
    BLAS on the dataset's dtype would, float32 products for float16/32 data (on the presets' datasets
    validation losses within 3e-7 of float64's and the same kept ranks, in half the time)."""
    n = dataset.n_examples
    targets = {k: dataset.targets[k] for k in keys}
    key_of = dataset.input_of.__getitem__
    train = dataset_stats(dataset.inputs, targets, split_weights(n, dataset.train_idx, dataset.quality, quality_threshold),
                          input_key=key_of, precision=precision)
    val = dataset_rows(dataset.inputs, targets, split_weights(n, dataset.val_idx, dataset.quality), input_key=key_of)
    used = resolve_precision(precision, *(dataset.inputs[key_of(k)] for k in keys), *targets.values())
    return Statistics(train, val, used)


@dataclass
class ExactFit:
    A: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    train_loss: float            # mean over modules of the solution's training loss (no ridge term)
    val_loss: float              # mean over modules of its validation loss
    ranks: dict[str, int]        # the rank kept per module (select_rank) or the adapter's


def exact_fit(stats: Statistics, rank: int, scale: float, *, ridge_rel: float, dropout: float, select_rank: bool,
              old: tuple[dict, dict] | None = None, lam: float = 0.0) -> ExactFit:
    """The exact rank-`rank` solution of every module; with `old` = ({key: D_old [out, in]},
    {key: (G_old, q_sum_old)}), the minimiser of L_new(D) + lam * the old task's mean loss increase
    lam tr((D - D_old) G_old (D - D_old)^T) q_sum_new / q_sum_old (lam = 1: both tasks weigh alike).
    Consolidation keeps the adapter's full rank: selecting a rank on the new task's validation
    rows alone would drop the old task's directions. Raises ExactSolveError (one line naming the
    module) before anything is stored."""
    for key, st in stats.train.items():  # before any factorisation: a zero Gram would read as "singular"
        if st.n == 0:
            raise ExactSolveError(key, "no examples above the quality threshold (n = 0)")
        if st.n < rank:
            raise ExactSolveError(key, f"only {st.n} examples above the quality threshold, fewer than the rank {rank}")
    if old is None:
        sols = solve_adapter(stats.train, rank, scale, val=stats.val, ridge_rel=ridge_rel, dropout=dropout,
                             select_rank=select_rank)
    else:
        sols = _consolidated(stats, rank, scale, old, lam, ridge_rel=ridge_rel, dropout=dropout)
    train = [loss_from_factors(st.G, st.C, st.rr, st.q_sum, sols[k].A, sols[k].B, scale, name=k)
             for k, st in stats.train.items()]  # the new task's own loss, also when consolidated
    return ExactFit({k: s.A for k, s in sols.items()}, {k: s.B for k, s in sols.items()}, float(np.mean(train)),
                    float(np.mean([s.val_loss for s in sols.values()])),
                    {k: int(s.effective_rank or s.rank) for k, s in sols.items()})


def _consolidated(stats, rank, scale, old, lam, *, ridge_rel, dropout):
    deltas, grams = old
    missing = sorted(set(stats.train) - set(grams))
    if missing:
        raise ExactSolveError(missing[0], "the last version stores no Gram for this module; retrain with "
                                          "continue_from_last: false or consolidation: ewc")
    factors, out = {}, {}
    for key, st in stats.train.items():
        G_old, q_old = grams[key]
        if G_old.shape != st.G.shape:
            raise ExactSolveError(key, f"stored Gram {G_old.shape} does not fit the module's {st.G.shape}")
        if not q_old > 0:
            raise ExactSolveError(key, f"stored Gram has total quality {q_old}")
        weight = float(lam) * st.q_sum / q_old
        G, C = consolidated_stats(st.G, st.C, G_old, deltas[key], weight, name=key)
        pair = (id(st.G), id(G_old))
        if pair not in factors:
            extra = dropout_ridge(st.G, dropout, name=key) if dropout else None
            factors[pair] = (G, ridge_factor(G, ridge=extra, ridge_rel=ridge_rel, name=key))
        G, f = factors[pair]
        rr = st.rr + consolidation_offset(G_old, deltas[key], weight)
        out[key] = solve_reduced_rank(G, C, rank, scale, rr=rr, q_sum=st.q_sum, n=st.n, name=key, factor=f,
                                      val=stats.val[key])
    return out


def certify(A: dict[str, np.ndarray], B: dict[str, np.ndarray], scale: float, stats: Statistics) -> dict[str, float]:
    """The certificate's asset fields for the stored factors (after any float16 rounding):
    train_loss, optimal_train_loss, optimality_gap = train_loss / optimal_train_loss - 1 and
    optimal_val_loss (the exact rank-r solution's validation loss)."""
    cert = certificate({k: (A[k].astype(np.float32), B[k].astype(np.float32), scale) for k in stats.train},
                       stats.train, val_stats=stats.val)
    return {"train_loss": cert.train_loss, **cert.metadata()}


SWEEP_LAMS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def consolidation_curve(stats: Statistics, rank: int, scale: float, old: tuple[dict, dict], *, ridge_rel: float,
                        dropout: float, lams=SWEEP_LAMS) -> list[dict[str, float]]:
    """The trade-off the asset page shows for `consolidation: exact`: for each lambda, the new
    task's validation loss and the old task's mean loss increase (from its stored Gram,
    tr(E G_old E^T) / (q_sum_old out), E = D - D_old), both means over modules."""
    deltas, grams = old
    rows = []
    for lam in lams:
        fit = exact_fit(stats, rank, scale, ridge_rel=ridge_rel, dropout=dropout, select_rank=False, old=old, lam=lam)
        rises = []
        for k in stats.train:
            G_old, q_old = grams[k]
            E = scale * (fit.B[k].astype(np.float64) @ fit.A[k].astype(np.float64)) - deltas[k]
            rises.append(float(np.sum((E @ G_old) * E)) / (q_old * E.shape[0]))
        rows.append({"lam": float(lam), "new_val_loss": fit.val_loss, "old_loss_increase": float(np.mean(rises))})
    return rows
