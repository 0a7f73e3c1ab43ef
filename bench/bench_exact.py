"""Exact-solver benchmarks: ratios against references measured in the same run (DESIGN.md section 8).

    python bench/bench_exact.py     # BENCH_THREADS=2 by default (NUMBA_NUM_THREADS and
                                    # OPENBLAS_NUM_THREADS both); BENCH_QUICK=1: small smoke run

1. Gram accumulation `accumulate_gram(G, X, q)` (float64 G) vs numpy's `X.T @ X` (OpenBLAS
   ssyrk, float32 result) on the same float32 X, 20000 x 768 and 20000 x 3072, alternating
   rounds. Target >= 0.8. Both precisions of ours are timed ("float64": float64 products and
   sums; "mixed": float32 products within a chunk, float64 across chunks), with the relative
   error of each result (and numpy's) against an exact float64 Gram, and the peak memory that
   the call allocates (tracemalloc) against the size of X.
2. Solve time per module, rank 16, ridge_rel 1e-3, at 768x768, 768x3072 (gate/up) and
   3072x768 (down), and the q/k/v layer with one shared factorisation.
3. The five presets at the default geometry (hidden 768, intermediate 3072, 2 layers, 1000
   synthetic examples, seed 0): the exact path (statistics of the training split from the raw
   dataset, `solve_adapter` with rank selection on the raw validation rows) against the default
   SGD training (`ruv_kernels.train.train`, default TrainSettings, not counting its row gathering):
   wall time ratio, val/noise floor of both, and the SGD checkpoint's optimality gap; and the
   bare float32 BLAS products any closed form reads (X^T X per input, X^T R per module) against
   SGD: the largest ratio an exact solver could reach on this machine.
   BENCH_ONLY=gram,solve,presets,asset selects parts; BENCH_STATS_PRECISION=float64 for the
   presets' statistics (default auto, as `trained_adapter`'s `statistics_precision`).
4. `asset`: the same comparison through `trained_adapter`'s own entry points, on the datasets the
   asset generates (catalogue presets, seed `stable_seed(name)`, the PEFT-initialised preset as
   SGD's start): SGD = `problems_for` + `kernels.train.train(TrainingConfig(dropout=p).settings())`;
   exact = `ruv_assets.judging.optimum.statistics` + `exact_fit` (default ridge_rel, select_rank,
   statistics_precision). Each
   with dropout 0 (the default) and with the preset's lora_dropout; every checkpoint
   certified (`optimum.certify`) as the asset does (dropout: `use_lora_dropout: true`). Prints wall time, ratio, val/floor, the
   optimality gap and the exact solution's validation loss over the floor.
"""

from __future__ import annotations

import os

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import time  # noqa: E402
import tracemalloc  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from ruv_kernels.exact import (ModuleStats, accumulate_gram, certificate, dataset_rows, dataset_stats,  # noqa: E402
                           ridge_factor, solve_adapter, solve_reduced_rank, split_weights)

ONLY = set(os.environ.get("BENCH_ONLY", "gram,solve,presets,asset").split(","))
STATS_PRECISION = os.environ.get("BENCH_STATS_PRECISION", "auto")  # of the presets' statistics, as the asset's default

QUICK = os.environ.get("BENCH_QUICK") == "1"
ROWS = 2000 if QUICK else 20000
ROUNDS = 3 if QUICK else 7


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternating(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each fn once per round, in turn (one warm-up round first), so load spikes hit all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_time(fn))
    return times


def peak_alloc(fn) -> int:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def bench_gram(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    q = np.ones(n, np.float32)
    G = np.zeros((d, d))
    exact = X.T.astype(np.float64) @ X.astype(np.float64)  # float64 BLAS on float64 copies: the truth

    def ours(precision):
        def run():
            G[...] = 0.0
            accumulate_gram(G, X, q, precision=precision)
        return run

    fns = {"numpy X.T @ X (float32)": lambda: X.T @ X, "ours float64": ours("float64"), "ours mixed": ours("mixed")}
    rounds = ROUNDS if d < 2048 else max(3, ROUNDS - 2)
    times = alternating(fns, rounds)
    ref = float(np.median(times["numpy X.T @ X (float32)"]))
    scale = float(np.max(np.abs(exact)))
    errs = {"numpy X.T @ X (float32)": float(np.max(np.abs((X.T @ X) - exact))) / scale}
    mem = {}
    for prec in ("float64", "mixed"):
        G[...] = 0.0
        mem[prec] = peak_alloc(ours(prec))
        errs[f"ours {prec}"] = float(np.max(np.abs(G - exact))) / scale
    print(f"\nGram {n} x {d} (X float32, {X.nbytes / 2**20:.0f} MiB), {rounds} alternating rounds:")
    print(f"  {'':28s} {'median s':>9s} {'best s':>8s} {'speed vs numpy':>15s} {'max rel err':>12s} {'peak alloc':>11s}")
    for k, ts in times.items():
        med, best = float(np.median(ts)), float(np.min(ts))
        m = mem.get(k.replace("ours ", ""))
        mtxt = f"{m / 2**20:8.1f} MiB" if m is not None else ""
        print(f"  {k:28s} {med:9.4f} {best:8.4f} {ref / med:14.2f}x {errs[k]:12.1e} {mtxt:>11s}")


def bench_solve() -> None:
    rng = np.random.default_rng(1)
    n = 4000 if not QUICK else 800
    cases = [("q_proj 768->768", 768, 768), ("up_proj 768->3072", 768, 3072), ("down_proj 3072->768", 3072, 768)]
    print(f"\nSolve per module (rank 16, ridge_rel 1e-3, statistics of {n} rows), {ROUNDS} rounds:")
    for label, d, o in cases:
        X = rng.standard_normal((n, d), dtype=np.float32)
        W = (rng.standard_normal((o, 16)) @ rng.standard_normal((16, d)) / d).astype(np.float32)
        R = X @ W.T + 0.1 * rng.standard_normal((n, o), dtype=np.float32)
        s = ModuleStats(d, o)
        t_acc = _time(lambda: s.update(X, R, np.ones(n, np.float32)))
        ts = alternating({"solve": lambda: s.solve(16, 2.0, ridge_rel=1e-3)}, ROUNDS)["solve"]
        print(f"  {label:22s} solve {np.median(ts):7.4f} s (best {np.min(ts):.4f})   stats of {n} rows {t_acc:.4f} s")
    d = 768
    X = rng.standard_normal((n, d), dtype=np.float32)
    s = ModuleStats(d, d).update(X, X[:, ::-1].copy(), np.ones(n, np.float32))

    def layer():
        f = ridge_factor(s.G, ridge_rel=1e-3)
        for _ in range(3):
            solve_reduced_rank(s.G, s.C, 16, 2.0, factor=f)

    def separate():
        for _ in range(3):
            solve_reduced_rank(s.G, s.C, 16, 2.0, ridge_rel=1e-3)

    t = alternating({"shared": layer, "separate": separate}, ROUNDS)
    print(f"  q/k/v at 768 (three solves): one shared factorisation {np.median(t['shared']):.4f} s, "
          f"three separate {np.median(t['separate']):.4f} s")


PRESETS = {  # rank, alpha, targets, as ruv_assets.catalogue.presets declares them
    "coder": (16, 32.0, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "researcher": (8, 16.0, ["q_proj", "k_proj", "v_proj"]),
    "security": (16, 32.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "architect": (12, 24.0, ["q_proj", "v_proj", "gate_proj", "up_proj"]),
    "reviewer": (8, 16.0, ["q_proj", "v_proj"]),
}


def blas_floor(task, threshold: float) -> float:
    """Seconds for the bare float32 products every closed form reads, X^T X per distinct input
    and X^T R per module, by numpy on the training rows gathered beforehand (median of 3): a
    bound on any exact solver's speed here, whatever it does around them."""
    from ruv_kernels.exact.dataset import default_input_key

    keep = task.train_idx[task.quality[task.train_idx] >= threshold]
    inputs = {k: np.ascontiguousarray(X[keep]) for k, X in task.inputs.items()}
    targets = {k: np.ascontiguousarray(R[keep]) for k, R in task.targets.items()}
    used = {default_input_key(k) for k in targets}

    def products():
        for ik in used:
            inputs[ik].T @ inputs[ik]
        for k, R in targets.items():
            inputs[default_input_key(k)].T @ R

    products()
    return float(np.median([_time(products) for _ in range(3)]))


def bench_presets() -> None:
    import math

    from ruv_kernels.modules import lora_scale
    from ruv_kernels.synthetic import generate_task
    from ruv_kernels.train import TrainSettings, build_problems, train

    threshold = TrainSettings().quality_threshold
    warm = generate_task("reviewer", ["q_proj"], 4, 64, 128, 1, 100, 0)  # JIT-compile SGD's kernels untimed
    wp = build_problems(warm.inputs, warm.targets, warm.train_idx, warm.val_idx)
    train(wp, {p.key: np.full((4, 64), 0.1, np.float32) for p in wp}, {p.key: np.zeros((64, 4), np.float32) for p in wp},
          1.0, warm.quality[warm.train_idx], warm.quality[warm.val_idx], TrainSettings(epochs=1))
    print(f"\nPresets (768/3072, 2 layers, 1000 examples, seed 0): exact (select_rank, {STATS_PRECISION} statistics)"
          " vs default SGD")
    print(f"  {'preset':10s} {'exact s':>8s} {'SGD s':>7s} {'ratio':>6s} {'exact val/floor':>16s} {'SGD val/floor':>14s}"
          f" {'kept ranks':>10s} {'SGD gap':>8s} {'BLAS s':>8s} {'SGD/BLAS':>9s}")
    for name, (rank, alpha, targets) in PRESETS.items():
        task = generate_task(name, targets, rank, 768, 3072, 2, 1000, 0)
        scale = lora_scale(alpha, rank)
        n = task.n_examples

        def exact():
            tr = dataset_stats(task.inputs, task.targets, split_weights(n, task.train_idx, task.quality, threshold),
                               precision=STATS_PRECISION)
            va = dataset_rows(task.inputs, task.targets, split_weights(n, task.val_idx, task.quality))
            return tr, va, solve_adapter(tr, rank, scale, val=va, select_rank=True)

        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            tr, va, sols = exact()
            ts.append(time.perf_counter() - t0)
        t_floor = blas_floor(task, threshold)
        problems = build_problems(task.inputs, task.targets, task.train_idx, task.val_idx)
        rng = np.random.default_rng(100)
        A = {p.key: (rng.uniform(-1, 1, (rank, p.X_train.shape[1])) / math.sqrt(p.X_train.shape[1])).astype(np.float32)
             for p in problems}
        B = {p.key: np.zeros((p.R_train.shape[1], rank), np.float32) for p in problems}
        t0 = time.perf_counter()
        res = train(problems, A, B, scale, task.quality[task.train_idx], task.quality[task.val_idx], TrainSettings())
        t_sgd = time.perf_counter() - t0
        cert = certificate({k: (res.A[k], res.B[k], scale) for k in tr}, tr)
        val = float(np.mean([s.val_loss for s in sols.values()]))
        kept = sorted({s.effective_rank for s in sols.values()})
        t_ex = float(np.median(ts))
        print(f"  {name:10s} {t_ex:8.3f} {t_sgd:7.2f} {t_sgd / t_ex:5.1f}x {val / task.noise_floor:16.4f}"
              f" {res.val_loss / task.noise_floor:14.4f} {str(kept):>10s} {cert.optimality_gap:8.4f}"
              f" {t_floor:8.3f} {t_sgd / t_floor:8.1f}x")


def bench_asset() -> None:
    from ruv_kernels.adapter import LoraAdapter
    from ruv_kernels.train import train
    from ruv_assets.judging import optimum
    from ruv_assets.assets.dataset import synthetic_to_dataset
    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
    from ruv_assets.judging.evaluation import problems_for, validation_loss
    from ruv_assets.catalogue.preset_seed import stable_seed
    from ruv_assets.catalogue.training_config import TrainingConfig
    from ruv_kernels.synthetic import generate_task

    geo = current_geometry()
    config = TrainingConfig()  # its settings with the given dropout below
    print(f"\ntrained_adapter's entry points ({geo.hidden_size}/{geo.intermediate_size}, {geo.num_layers} layers, the "
          f"asset's datasets): exact (statistics + exact_fit) vs SGD (problems_for + train), default TrainingConfig")
    print(f"  {'preset':10s} {'dropout':>7s} {'exact s':>8s} {'SGD s':>7s} {'ratio':>6s} {'exact val/fl':>12s}"
          f" {'SGD val/fl':>10s} {'exact gap':>9s} {'SGD gap':>8s} {'opt val/fl':>10s} {'SGD epochs':>10s}")
    for name in PRESETS:
        entry = current_catalogue().adapter(name)
        seed = stable_seed(name)
        task = generate_task(name, list(entry.target_modules), entry.rank, geo.hidden_size, geo.intermediate_size,
                             geo.num_layers, 1000, seed, q_size=geo.q_size, kv_size=geo.kv_size)
        dataset = synthetic_to_dataset(name, task, list(entry.target_modules), geo.num_layers, seed)
        spec = entry.spec(geo)
        start = LoraAdapter.initialise(spec, seed=stable_seed(name))
        keys = start.keys()
        floor = dataset.meta["noise_floor"]
        q_val = dataset.quality[dataset.val_idx]
        for p in sorted({0.0, float(entry.dropout)}):
            settings = TrainingConfig(dropout=p).settings()
            t0 = time.perf_counter()
            stats = optimum.statistics(dataset, keys, settings.quality_threshold, precision=config.statistics_precision)
            fit = optimum.exact_fit(stats, spec.rank, spec.scale, ridge_rel=config.ridge_rel, dropout=p,
                                    select_rank=config.select_rank)
            t_ex = time.perf_counter() - t0
            t0 = time.perf_counter()
            problems = problems_for(dataset, keys)
            res = train(problems, {k: start.A[k].copy() for k in keys}, {k: start.B[k].copy() for k in keys}, spec.scale,
                        dataset.quality[dataset.train_idx], q_val, settings)
            t_sgd = time.perf_counter() - t0
            ex = LoraAdapter(spec, fit.A, fit.B)
            sgd = LoraAdapter(spec, res.A, res.B)
            c_ex = optimum.certify(ex.A, ex.B, spec.scale, stats)
            c_sgd = optimum.certify(sgd.A, sgd.B, spec.scale, stats)
            v_ex, v_sgd = validation_loss(ex, problems, q_val), validation_loss(sgd, problems, q_val)
            print(f"  {name:10s} {p:7.2f} {t_ex:8.2f} {t_sgd:7.2f} {t_sgd / t_ex:5.1f}x {v_ex / floor:12.4f}"
                  f" {v_sgd / floor:10.4f} {c_ex['optimality_gap']:9.4%} {c_sgd['optimality_gap']:8.4%}"
                  f" {c_sgd['optimal_val_loss'] / floor:10.4f} {res.epochs_run:10d}", flush=True)


def main() -> None:
    print(f"threads: NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']} OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
          f" (numba {numba.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, load average"
          f" {os.getloadavg()[0]:.1f})")
    if "gram" in ONLY:
        for d in (768, 3072):
            bench_gram(ROWS, d)
    if "solve" in ONLY:
        bench_solve()
    if "presets" in ONLY:
        bench_presets()
    if "asset" in ONLY:
        bench_asset()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
