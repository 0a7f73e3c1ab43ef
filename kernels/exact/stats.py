"""Sufficient statistics of one module's weighted least-squares problem, and of one layer's modules.

For inputs X [n, in], targets R [n, out] and weights q (0 = excluded):

    G = X^T Q X  [in, in]     C = X^T Q R  [in, out]     rr = sum_i q_i ||r_i||^2
    q_sum = sum_i q_i         n = rows with q_i > 0

These determine the loss of any delta (`loss_from_stats`), the exact rank-r optimum
(`solve_reduced_rank`) and the optimality certificate, and their size is fixed by the shapes, not
by the number of examples (a dataset of statistics does not grow with the data).

Shared inputs: q/k/v (and gate/up) of one layer read the same X, so they share one Gram.
`LayerStats(d_in, {"q_proj": d_q, ...})` holds G, n and q_sum once and a C and rr per module;
`LayerStats.update(X, {name: R}, q)` streams X once for the Gram and every cross term, and
`LayerStats.module(name)` returns a `ModuleStats` whose G *is* the layer's array (no copy).
Such a view is read-only for accumulation: updating it would count the shared X twice, so its
`update` raises; update the layer instead.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.exact.accumulate import stream_stats
from ruv_kernels.exact.errors import ExactSolveError


class ModuleStats:
    """G, C, rr, q_sum, n of one module; `update` adds a batch of rows, `merge` adds another shard."""

    def __init__(self, d_in: int, d_out: int, *, G: np.ndarray | None = None, name: str = "module",
                 precision: str = "float64"):
        d_in, d_out = int(d_in), int(d_out)
        if d_in < 1 or d_out < 1:
            raise ExactSolveError(name, f"shape must be positive, got d_in={d_in}, d_out={d_out}")
        self.name = name
        self.d_in, self.d_out = d_in, d_out
        self.precision = precision
        self.shared_gram = G is not None
        if G is not None and (G.shape != (d_in, d_in) or G.dtype != np.float64 or not G.flags.c_contiguous):
            raise ExactSolveError(name, f"a shared Gram must be C-contiguous float64 [{d_in}, {d_in}], got {G.dtype} {G.shape}")
        self.G = G if G is not None else np.zeros((d_in, d_in), np.float64)
        self.gram_key = name  # the name its Gram is stored under (a LayerStats view: the layer's)
        self.C = np.zeros((d_in, d_out), np.float64)
        self.rr = 0.0
        self.q_sum = 0.0
        self.n = 0

    def update(self, X: np.ndarray, R: np.ndarray, q, *, chunk_rows: int | None = None) -> "ModuleStats":
        """Add the rows of X [n, in], R [n, out] (float16/32/64) weighted by q [n] (one pass over X)."""
        if self.shared_gram:
            raise ExactSolveError(self.name, "this statistics view shares its layer's Gram; update the LayerStats instead")
        if getattr(R, "ndim", 0) != 2 or R.shape[1] != self.d_out:
            raise ExactSolveError(self.name, f"R must have {self.d_out} columns, got shape {getattr(R, 'shape', None)}")
        if getattr(X, "ndim", 0) != 2 or X.shape[1] != self.d_in:
            raise ExactSolveError(self.name, f"X must have {self.d_in} columns, got shape {getattr(X, 'shape', None)}")
        used, qs, rr = stream_stats(self.G, X, q, ((self.C, R),), precision=self.precision,
                                    chunk_rows=chunk_rows, name=self.name)
        self.n += used
        self.q_sum += qs
        self.rr += rr[0]
        return self

    def merge(self, other: "ModuleStats") -> "ModuleStats":
        """Add another shard's statistics of the same module (same shapes)."""
        if (other.d_in, other.d_out) != (self.d_in, self.d_out):
            raise ExactSolveError(self.name, f"cannot merge statistics of shape {other.d_in}x{other.d_out} into {self.d_in}x{self.d_out}")
        if self.shared_gram:
            raise ExactSolveError(self.name, "this statistics view shares its layer's Gram; merge the LayerStats instead")
        self.G += other.G
        self.C += other.C
        self.rr += other.rr
        self.q_sum += other.q_sum
        self.n += other.n
        return self

    def copy(self) -> "ModuleStats":
        """An independent copy (owning its Gram)."""
        out = ModuleStats(self.d_in, self.d_out, name=self.name, precision=self.precision)
        out.G[...] = self.G
        out.C[...] = self.C
        out.rr, out.q_sum, out.n = self.rr, self.q_sum, self.n
        return out

    @property
    def nbytes(self) -> int:
        """Memory of the statistics (G counted even when shared)."""
        return int(self.G.nbytes + self.C.nbytes + 3 * 8)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The statistics as named arrays (for a safetensors file written by resources/)."""
        return {"G": self.G, "C": self.C, "rr": np.array([self.rr]), "q_sum": np.array([self.q_sum]),
                "n": np.array([self.n], np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict, *, name: str = "module") -> "ModuleStats":
        """Inverse of `to_arrays` (copies the arrays)."""
        try:
            G, C = np.asarray(arrays["G"], np.float64), np.asarray(arrays["C"], np.float64)
            rr, q_sum, n = float(arrays["rr"][0]), float(arrays["q_sum"][0]), int(arrays["n"][0])
        except (KeyError, IndexError, TypeError) as exc:
            raise ExactSolveError(name, f"statistics need G, C, rr, q_sum and n ({exc})") from None
        if G.ndim != 2 or C.ndim != 2 or G.shape[0] != G.shape[1] or C.shape[0] != G.shape[0]:
            raise ExactSolveError(name, f"statistics shapes do not fit: G {G.shape}, C {C.shape}")
        out = cls(G.shape[0], C.shape[1], name=name)
        out.G[...] = G
        out.C[...] = C
        out.rr, out.q_sum, out.n = rr, q_sum, n
        return out

    def solve(self, rank: int, scale: float, **kwargs):
        """The exact rank-r optimum on these statistics (`solve_reduced_rank`; val= may be a ModuleStats)."""
        from ruv_kernels.exact.solve import solve_reduced_rank

        kwargs.setdefault("name", self.name)
        return solve_reduced_rank(self.G, self.C, rank, scale, rr=self.rr, q_sum=self.q_sum, n=self.n, **kwargs)

    def loss(self, D: np.ndarray) -> float:
        """Weighted mean squared error (per output element) of the dense delta D [out, in]."""
        from ruv_kernels.exact.loss import loss_from_stats

        return loss_from_stats(self.G, self.C, self.rr, self.q_sum, D, name=self.name)


class LayerStats:
    """One Gram for the modules of a layer that read the same input, a C and rr per module."""

    def __init__(self, d_in: int, d_outs: dict[str, int], *, name: str = "layer", precision: str = "float64"):
        if not d_outs:
            raise ExactSolveError(name, "a layer needs at least one module")
        self.name = name
        self.d_in = int(d_in)
        self.precision = precision
        self.G = np.zeros((self.d_in, self.d_in), np.float64)
        self.C = {k: np.zeros((self.d_in, int(v)), np.float64) for k, v in d_outs.items()}
        self.rr = {k: 0.0 for k in d_outs}
        self.q_sum = 0.0
        self.n = 0

    def update(self, X: np.ndarray, Rs: dict[str, np.ndarray], q, *, chunk_rows: int | None = None) -> "LayerStats":
        """Add rows: X [n, in] once for the Gram and every module's C; Rs must name every module."""
        if set(Rs) != set(self.C):
            raise ExactSolveError(self.name, f"targets must be given for exactly {sorted(self.C)}, got {sorted(Rs)}")
        if getattr(X, "ndim", 0) != 2 or X.shape[1] != self.d_in:
            raise ExactSolveError(self.name, f"X must have {self.d_in} columns, got shape {getattr(X, 'shape', None)}")
        keys = list(self.C)
        for k in keys:
            R = Rs[k]
            if getattr(R, "ndim", 0) != 2 or R.shape[1] != self.C[k].shape[1]:
                raise ExactSolveError(f"{self.name}.{k}", f"R must have {self.C[k].shape[1]} columns, got shape {getattr(R, 'shape', None)}")
        used, qs, rr = stream_stats(self.G, X, q, [(self.C[k], Rs[k]) for k in keys], precision=self.precision,
                                    chunk_rows=chunk_rows, name=self.name)
        self.n += used
        self.q_sum += qs
        for k, v in zip(keys, rr):
            self.rr[k] += v
        return self

    def merge(self, other: "LayerStats") -> "LayerStats":
        if other.d_in != self.d_in or {k: v.shape for k, v in other.C.items()} != {k: v.shape for k, v in self.C.items()}:
            raise ExactSolveError(self.name, "cannot merge layer statistics of different shapes or modules")
        self.G += other.G
        for k in self.C:
            self.C[k] += other.C[k]
            self.rr[k] += other.rr[k]
        self.q_sum += other.q_sum
        self.n += other.n
        return self

    def module(self, key: str) -> ModuleStats:
        """A ModuleStats view of one module: G and C are this layer's arrays (no copy)."""
        if key not in self.C:
            raise ExactSolveError(self.name, f"no module {key!r}; have {sorted(self.C)}")
        view = ModuleStats(self.d_in, self.C[key].shape[1], G=self.G, name=key, precision=self.precision)
        view.C = self.C[key]
        view.rr, view.q_sum, view.n = self.rr[key], self.q_sum, self.n
        view.gram_key = self.name
        return view

    @property
    def nbytes(self) -> int:
        return int(self.G.nbytes + sum(c.nbytes for c in self.C.values()))
