"""Forward of one vector through an adapter's 4 modules (coder: q/k/v/o, r16, hidden 768).

Ours: `kernels.lora.forward_vector_into` with preallocated buffers, once per module. References
in the same run: numpy (`s * B @ (A @ x)`) and PyTorch (the same with torch tensors, no autograd).
Target (DESIGN.md section 8): <= 10 us for the 4 modules.
"""

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from ruv_kernels.adapter import AdapterSpec, LoraAdapter  # noqa: E402
from ruv_kernels.lora import forward_stacked_into, forward_vector_into  # noqa: E402

REPEATS, INNER = 15, 2000


def median_us(fn) -> float:
    fn()
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(INNER):
            fn()
        runs.append((time.perf_counter() - start) / INNER * 1e6)
    return float(np.median(runs))


def main() -> None:
    spec = AdapterSpec(16, 32.0, ("q_proj", "k_proj", "v_proj", "o_proj"), 768, 3072, 1)
    adapter = LoraAdapter.initialise(spec, 0)
    rng = np.random.default_rng(0)
    for key in adapter.keys():
        adapter.B[key] = rng.standard_normal(adapter.B[key].shape).astype(np.float32)
    x = rng.standard_normal(768).astype(np.float32)
    keys = adapter.keys()
    factors = [(adapter.A[k], adapter.B[k]) for k in keys]
    scale = np.float32(spec.scale)
    tmp = np.empty(16, np.float32)
    outs = [np.empty(768, np.float32) for _ in keys]

    def ours():
        for (A, B), out in zip(factors, outs):
            forward_vector_into(x, A, B, scale, tmp, out)

    X4 = np.ascontiguousarray(np.stack([x] * len(keys)))
    A4 = np.ascontiguousarray(np.stack([a for a, _ in factors]))
    B4 = np.ascontiguousarray(np.stack([b.T for _, b in factors]))  # transposed once at load
    out4 = np.empty((len(keys), 768), np.float32)

    def ours_stacked():
        forward_stacked_into(X4, A4, B4, scale, tmp, out4)

    def with_numpy():
        for A, B in factors:
            scale * (B @ (A @ x))

    results = {"numba (ours)": median_us(ours), "numba, stacked": median_us(ours_stacked), "numpy": median_us(with_numpy)}
    for (A, B), out, stacked in zip(factors, outs, out4):
        np.testing.assert_allclose(out, scale * (B @ (A @ x)), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(stacked, out, rtol=1e-6, atol=1e-5)
    try:
        import torch

        torch.set_num_threads(1)
        tf = [(torch.from_numpy(A), torch.from_numpy(B)) for A, B in factors]
        tx = torch.from_numpy(x)

        def with_torch():
            with torch.no_grad():
                for A, B in tf:
                    scale * (B @ (A @ tx))

        results["pytorch"] = median_us(with_torch)
    except ImportError:
        pass
    print("forward of one vector through 4 modules (coder, r16, 768), median per call, 1 thread")
    for name, us in results.items():
        print(f"  {name:14s} {us:7.2f} us   ({us / results['numba (ours)']:.2f}x ours)")
    best = min(results["numba (ours)"], results["numba, stacked"])
    print(f"  target <= 10 us: {'met' if best <= 10 else 'NOT met'} ({best:.2f} us)")


if __name__ == "__main__":
    main()
