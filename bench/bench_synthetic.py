"""Synthetic data generation: 1000 examples at hidden 768 (coder: q, k, v, o; one layer).

Times `kernels.synthetic.generate_task` end to end (inputs for `hidden` and `attn_out`, quality,
four target matrices with their noise, ground-truth factors, split) after a JIT warm-up, and
prints the median. Target <= 2 ms (the original claimed < 10 ms). Also prints a larger preset for
scale. Usage: python bench/bench_synthetic.py [--threads 2] [--reps 50]
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    import time

    import numpy as np

    from ruv_kernels.synthetic import generate_task

    cases = [
        ("coder q,k,v,o  1 layer  n=1000 @768", ("coder", ["q_proj", "k_proj", "v_proj", "o_proj"], 16, 768, 3072, 1, 1000)),
        ("security all 7 2 layers n=1000 @768/3072", ("security", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                "up_proj", "down_proj"], 16, 768, 3072, 2, 1000)),
    ]
    for label, (task, targets, rank, hidden, inter, layers, n) in cases:
        generate_task(task, targets, rank, hidden, inter, layers, n, 0)  # JIT warm-up / cache load
        times = []
        for rep in range(args.reps):
            t0 = time.perf_counter()
            out = generate_task(task, targets, rank, hidden, inter, layers, n, rep)
            times.append(time.perf_counter() - t0)
            del out
        mb = (sum(v.nbytes for v in generate_task(task, targets, rank, hidden, inter, layers, n, 0).targets.values())
              + sum(v.nbytes for v in generate_task(task, targets, rank, hidden, inter, layers, n, 0).inputs.values())) / 1e6
        med = float(np.median(times))
        print(f"{label:42s} median {med * 1e3:7.3f} ms  min {min(times) * 1e3:7.3f} ms  ({mb:.1f} MB of arrays)")
    print(f"threads {args.threads}; target for the first line: <= 2 ms")


if __name__ == "__main__":
    main()
