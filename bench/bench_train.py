"""Training throughput, coder preset (r16 a32; q, k, v, o at hidden 768), batch 256: Numba vs PyTorch.

One step = forward + backward of the quality-weighted MSE over all four modules + an Adam update,
measured in the same run for:

- numba: ruv_kernels.train's `steps.run_steps`, the loop `train` runs: per minibatch the fused gradient
  kernel over all four modules (`gradients.grad_by_module`) and the fused Adam update, reading the
  minibatch rows in place from the training arrays; timed 16 steps per call, reported per step;
- torch: the same step written the ordinary way (autograd over `s * (x @ A.T) @ B.T - r`,
  `torch.optim.Adam`), on minibatches already sliced into contiguous tensors (gathering is not
  charged to torch).

Both use the same thread count (NUMBA_NUM_THREADS / torch.set_num_threads). Rounds alternate
between the two and the figure is the median step time; the ratio of examples/s is printed. Run it
on an otherwise idle machine: fork-join kernels on shared cores measure the neighbours.
Usage: python bench/bench_train.py [--threads 2] [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import time

    import numpy as np
    import torch

    from ruv_kernels.modules import lora_scale
    from ruv_kernels.train import OPT_CODE, ModuleProblem
    from ruv_kernels.train.evaluation import target_sqnorms
    from ruv_kernels.train.bundles import Hyper
    from ruv_kernels.train.steps import run_steps
    from ruv_kernels.train.workspace import Workspace

    torch.set_num_threads(args.threads)
    n_pool, d, r, bs = 4096, 768, 16, args.batch
    s = lora_scale(32, r)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (n_pool, d)).astype(np.float32)
    Xo = rng.uniform(-1, 1, (n_pool, d)).astype(np.float32)
    Rs = [(rng.standard_normal((n_pool, d)) * 10).astype(np.float32) for _ in range(4)]
    q = rng.uniform(0.5, 1.0, n_pool).astype(np.float32)
    keys = ["layers.0.q_proj", "layers.0.k_proj", "layers.0.v_proj", "layers.0.o_proj"]
    bound = 1.0 / np.sqrt(d)
    A0 = {k: rng.uniform(-bound, bound, (r, d)).astype(np.float32) for k in keys}
    B0 = {k: (rng.standard_normal((d, r)) * 0.01).astype(np.float32) for k in keys}
    batches = [np.sort(rng.permutation(n_pool)[:bs]).astype(np.int64) for _ in range(16)]

    # ---------------- numba
    probs = [ModuleProblem(k, X if i < 3 else Xo, Rs[i], X[:8], Rs[i][:8]) for i, k in enumerate(keys)]
    ws = Workspace(probs, A0, B0, s, bs, 8)
    rsq = {id(p.R_train): target_sqnorms(p.R_train) for p in probs}
    mods, gather = ws.gather(probs, rsq)
    order = np.concatenate(batches)  # 16 minibatches of 256 rows, as an epoch's shuffled order
    lrs = np.full(1_000_000, 1e-4)
    hyper = Hyper(OPT_CODE["adam"], 0.9, 0.999, 1e-8, 0.0, 0.0, 0.999, 0.0, 0.0)  # no EWC, no clipping
    state = {"step": 0}

    def numba_steps(b_from: int, b_to: int) -> float:
        """Exactly what ruv_kernels.train.train runs for float32 data: `run_steps` over minibatches
        (per step: the fused gradient kernel for all modules, then the fused Adam update)."""
        out = run_steps(mods, ws.scratch, ws.layout, ws.state, hyper, gather, order, b_from, b_to, bs, q, lrs,
                        state["step"], ws.by_rows)
        state["step"] = out[0]
        return out[1]

    # ---------------- torch
    tX = torch.from_numpy(X)
    tXo = torch.from_numpy(Xo)
    tR = [torch.from_numpy(R) for R in Rs]
    tq = torch.from_numpy(q)
    tb = []
    for rows in batches:
        ix = torch.from_numpy(rows)
        tb.append((tX[ix].contiguous(), tXo[ix].contiguous(), [R[ix].contiguous() for R in tR], tq[ix].contiguous()))
    tA = [torch.nn.Parameter(torch.from_numpy(A0[k].copy())) for k in keys]
    tB = [torch.nn.Parameter(torch.from_numpy(B0[k].copy())) for k in keys]
    opt = torch.optim.Adam(tA + tB, lr=1e-4)

    def torch_step(batch) -> float:
        xb, xob, rb, qb = batch
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        qs = qb.sum()
        for i in range(4):
            x = xb if i < 3 else xob
            e = s * (x @ tA[i].T) @ tB[i].T - rb[i]
            loss = loss + (qb[:, None] * e * e).sum() / (qs * d)
        loss = loss / 4
        loss.backward()
        opt.step()
        return float(loss.detach())

    # correctness: both compute the same loss on the same weights and batch (before any update)
    ln = numba_steps(0, 1)
    lt = torch_step(tb[0])
    print(f"first-step loss: numba {ln:.6g}  torch {lt:.6g}  (relative difference {abs(ln - lt) / lt:.1e})")

    # warm-up (JIT compiled on first call; cache=True keeps it for later runs)
    t0 = time.perf_counter()
    numba_steps(0, 16)
    for i in range(10):
        torch_step(tb[i % 16])
    print(f"warm-up {time.perf_counter() - t0:.2f} s")

    times = {"numba": [], "torch": []}
    for _ in range(args.rounds):
        local = []
        for i in range(args.steps // 16):  # numba: 16 steps per call, as train() runs an epoch
            t = time.perf_counter()
            numba_steps(0, 16)
            local.append((time.perf_counter() - t) / 16)
        times["numba"].append(float(np.median(local)))
        local = []
        for i in range(args.steps):
            t = time.perf_counter()
            torch_step(tb[i % 16])
            local.append(time.perf_counter() - t)
        times["torch"].append(float(np.median(local)))
    med = {k: float(np.median(v)) for k, v in times.items()}
    best = {k: float(np.min(v)) for k, v in times.items()}
    for k in ("numba", "torch"):
        print(f"{k:6s} step median {med[k] * 1e3:8.3f} ms  ({bs / med[k]:10.0f} examples/s)   "
              f"best-round median {best[k] * 1e3:.3f} ms")
    print(f"ratio numba/torch examples/s: {med['torch'] / med['numba']:.2f}x (median of rounds), "
          f"{best['torch'] / best['numba']:.2f}x (best rounds)   target >= 3x")
    print(f"threads {args.threads}, batch {bs}, rank {r}, hidden {d}, modules q,k,v,o, "
          f"torch {torch.__version__}, numba threading layer {__import__('numba').threading_layer()}")


if __name__ == "__main__":
    main()
