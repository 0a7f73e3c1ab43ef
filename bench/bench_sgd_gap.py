"""How close default-style SGD gets to the rank-r training optimum: the optimality gap of the
checkpoint for settings variants, per preset (what chose the default learning rate).

    python bench/bench_sgd_gap.py '[{}, {"learning_rate": 0.03}, {"epochs": 60}]' security,coder

Presets at the default geometry (768/3072, 2 layers, 1000 synthetic examples, seed 0, PEFT-style
init seeded 100), as bench_exact.py's presets part; each variant is a dict of TrainSettings fields
over the defaults. BENCH_THREADS=1 by default.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

os.environ.setdefault("BENCH_THREADS", "1")  # bench_exact, imported below, sets the thread variables from it
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.bench_exact import PRESETS  # noqa: E402
from ruv_kernels.exact import certificate, dataset_stats, split_weights  # noqa: E402
from ruv_kernels.modules import lora_scale  # noqa: E402
from ruv_kernels.synthetic import generate_task  # noqa: E402
from ruv_kernels.train import TrainSettings, build_problems, train  # noqa: E402


def main(variants: list[dict], names: list[str]) -> None:
    for name in names:
        rank, alpha, targets = PRESETS[name]
        task = generate_task(name, targets, rank, 768, 3072, 2, 1000, 0)
        scale, n = lora_scale(alpha, rank), task.n_examples
        problems = build_problems(task.inputs, task.targets, task.train_idx, task.val_idx)
        for v in variants:
            settings = TrainSettings(**v)
            tr = dataset_stats(task.inputs, task.targets, split_weights(n, task.train_idx, task.quality, settings.quality_threshold))
            rng = np.random.default_rng(100)
            A = {p.key: (rng.uniform(-1, 1, (rank, p.X_train.shape[1])) / math.sqrt(p.X_train.shape[1])).astype(np.float32)
                 for p in problems}
            B = {p.key: np.zeros((p.R_train.shape[1], rank), np.float32) for p in problems}
            t0 = time.perf_counter()
            res = train(problems, A, B, scale, task.quality[task.train_idx], task.quality[task.val_idx], settings)
            t = time.perf_counter() - t0
            cert = certificate({k: (res.A[k], res.B[k], scale) for k in tr}, tr)
            print(f"{name:10s} {json.dumps(v):40s} gap {cert.optimality_gap:7.3%} val/floor {res.val_loss / task.noise_floor:.4f}"
                  f" epochs {res.epochs_run} best {res.best_epoch} {t:.1f} s", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [{}],
         (sys.argv[2] if len(sys.argv) > 2 else ",".join(PRESETS)).split(","))
