"""Wall time of a default training run (what `trained_adapter` runs), per preset: the acceptance
runs of tests/kernels/test_train_acceptance.py (hidden 768, intermediate 3072, 2 layers, 1000
examples, default TrainSettings), timed here rather than asserted in the test suite.

Target: seconds, not minutes (< 120 s each; typically 0.3-5 s on 2 cores, after JIT warm-up).
Usage: python bench/bench_train_wall.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "kernels"))

    from test_train_acceptance import PRESETS, peft_init

    from ruv_kernels.modules import lora_scale
    from ruv_kernels.synthetic import generate_task
    from ruv_kernels.train import TrainSettings, build_problems, train

    warm = True
    for name in sorted(PRESETS):
        rank, alpha, targets = PRESETS[name]
        for seed in args.seeds:
            task = generate_task(name, targets, rank, 768, 3072, 2, 1000, seed)
            problems = build_problems(task.inputs, task.targets, task.train_idx, task.val_idx)
            A, B = peft_init(problems, rank, seed + 100)
            scale = lora_scale(alpha, rank)
            q_train, q_val = task.quality[task.train_idx], task.quality[task.val_idx]
            if warm:  # compile (or load) the kernels outside the timing
                train(problems, A, B, scale, q_train, q_val, TrainSettings(epochs=1))
                warm = False
            t0 = time.perf_counter()
            result = train(problems, A, B, scale, q_train, q_val, TrainSettings())
            elapsed = time.perf_counter() - t0
            print(f"{name:9s} seed {seed}: {elapsed:6.2f} s, {result.epochs_run} epochs, "
                  f"val/floor {result.val_loss / task.noise_floor:.4f}   target < 120 s: "
                  f"{'met' if elapsed < 120 else 'MISSED'}")


if __name__ == "__main__":
    main()
