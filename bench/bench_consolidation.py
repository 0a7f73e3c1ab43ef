"""Consolidation trade-off: EWC++ (diagonal online Fisher, SGD) against exact consolidation (the
old task's Gram, closed form), across a sweep of lambda, on the same two tasks.

    python bench/bench_consolidation.py     # BENCH_THREADS=1 by default; BENCH_PRESET=reviewer

Old task: the preset's synthetic dataset as `synthetic_dataset` generates it (seed
`stable_seed(name)`); new task: the same preset with dataset seed + 7 (another ground truth, same
geometry). The old checkpoint is the default SGD run on the old task (its EWC++ Fisher and its
training Gram are what each method penalises against); both methods start from it. For each
lambda: EWC++ = default SGD training on the new task with `EwcState(old checkpoint, Fisher)` and
`ewc_lambda = lambda`; exact = `ruv_assets.judging.optimum.exact_fit(..., old=(D_old, G_old), lam)`.
Each point is (new-task validation loss, old-task validation loss), both on held-out rows.
Writes docs/consolidation-sweep.png and prints the table.
"""

from __future__ import annotations

import os
import sys

THREADS = int(os.environ.get("BENCH_THREADS", "1"))
for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from ruv_kernels.adapter import LoraAdapter  # noqa: E402
from ruv_kernels.synthetic import generate_task  # noqa: E402
from ruv_kernels.train import EwcState, train  # noqa: E402
from ruv_assets import optimum  # noqa: E402
from ruv_assets.assets.dataset import synthetic_to_dataset  # noqa: E402
from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry  # noqa: E402
from ruv_assets.judging.evaluation import problems_for, validation_loss  # noqa: E402
from ruv_assets.judging.plots import tradeoff_png  # noqa: E402
from ruv_assets.catalogue.preset_seed import stable_seed  # noqa: E402
from ruv_assets.catalogue.training_config import TrainingConfig  # noqa: E402

PRESET = os.environ.get("BENCH_PRESET", "reviewer")
EWC_LAMS = [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]
EXACT_LAMS = [0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
OUT = Path(__file__).resolve().parent.parent / "docs" / "consolidation-sweep.png"


def dataset(entry, geo, seed):
    task = generate_task(entry.name, list(entry.target_modules), entry.rank, geo.hidden_size, geo.intermediate_size,
                         geo.num_layers, 1000, seed, q_size=geo.q_size, kv_size=geo.kv_size)
    return synthetic_to_dataset(entry.name, task, list(entry.target_modules), geo.num_layers, seed)


def main() -> None:
    geo = current_geometry()
    entry = current_catalogue().adapter(PRESET)
    spec = entry.spec(geo)
    settings = TrainingConfig().settings(0.0)
    old_ds, new_ds = dataset(entry, geo, stable_seed(PRESET)), dataset(entry, geo, stable_seed(PRESET) + 7)
    start = LoraAdapter.initialise(spec, seed=stable_seed(PRESET))
    keys = start.keys()
    old_p, new_p = problems_for(old_ds, keys), problems_for(new_ds, keys)
    q_old, q_new = old_ds.quality[old_ds.val_idx], new_ds.quality[new_ds.val_idx]

    def fit_sgd(problems, ds, A, B, lam=0.0, ewc=None):
        return train(problems, {k: A[k].copy() for k in keys}, {k: B[k].copy() for k in keys}, spec.scale,
                     ds.quality[ds.train_idx], ds.quality[ds.val_idx], settings.replace(ewc_lambda=lam), ewc=ewc)

    old_run = fit_sgd(old_p, old_ds, start.A, start.B)
    old = LoraAdapter(spec, old_run.A, old_run.B)
    old_stats = optimum.statistics(old_ds, keys, settings.quality_threshold)
    new_stats = optimum.statistics(new_ds, keys, settings.quality_threshold)
    grams = {k: (st.G, st.q_sum) for k, st in old_stats.train.items()}
    deltas = {k: spec.scale * (old.B[k].astype(np.float64) @ old.A[k].astype(np.float64)) for k in keys}

    def point(adapter, lam):
        return {"lam": lam, "new_val_loss": validation_loss(adapter, new_p, q_new),
                "old_val_loss": validation_loss(adapter, old_p, q_old)}

    print(f"{PRESET} at {geo.hidden_size}/{geo.intermediate_size}, {geo.num_layers} layers; old checkpoint: old-task val "
          f"{validation_loss(old, old_p, q_old):.5g}, new-task val {validation_loss(old, new_p, q_new):.5g}; noise floors "
          f"old {old_ds.meta['noise_floor']:.5g}, new {new_ds.meta['noise_floor']:.5g}")
    ewc_rows = []
    for lam in EWC_LAMS:
        run = fit_sgd(new_p, new_ds, old.A, old.B, lam, EwcState(old.A, old.B, old_run.fisher))
        ewc_rows.append(point(LoraAdapter(spec, run.A, run.B), lam))
        print(f"  EWC++ lambda {lam:<8g} new val {ewc_rows[-1]['new_val_loss']:.5g}  old val {ewc_rows[-1]['old_val_loss']:.5g}",
              flush=True)
    exact_rows = []
    for lam in EXACT_LAMS:
        fit = optimum.exact_fit(new_stats, spec.rank, spec.scale, ridge_rel=1e-4, dropout=0.0, select_rank=False,
                                old=(deltas, grams), lam=lam)
        exact_rows.append(point(LoraAdapter(spec, fit.A, fit.B), lam))
        print(f"  exact lambda {lam:<8g} new val {exact_rows[-1]['new_val_loss']:.5g}  old val {exact_rows[-1]['old_val_loss']:.5g}",
              flush=True)
    OUT.write_bytes(tradeoff_png({"EWC++ (SGD, diagonal Fisher)": ewc_rows, "exact (Gram, closed form)": exact_rows},
                                 f"consolidation trade-off, {PRESET} (labels: lambda)"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
