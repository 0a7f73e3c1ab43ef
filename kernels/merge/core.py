"""What every merge method shares: the error type, the result, input checks, and the two ways
a merged module becomes LoRA factors again.

- Linear methods hand over per-source coefficients; the merged delta sum_i c_i s_i B_i A_i is
  exactly B_cat @ A_cat with A_cat = vstack(A_i), B_cat = hstack(c_i s_i B_i). A smaller target
  rank is reached by a truncated SVD of that product computed from QR of the two factors and an
  SVD of the small core: the dense delta is never formed.
- Dense methods hand over the dense merged delta; it is truncated to its best rank-k
  approximation through LAPACK's eigensolver on its Gram matrix (`truncate_dense`).

Either way the output has one rank R for all modules (zero-padded), the scale is folded into
B (PEFT then loads it with alpha = R), and the relative Frobenius reconstruction error is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg



class MergeError(ValueError):
    """A merge request a user can get wrong: bad parameters, sources or shapes."""


@dataclass
class MergeResult:
    """Merged adapter factors: every module's delta is exactly `B_out @ A_out` (scale folded in).

    All modules share `rank` (smaller ones zero-padded), so a PEFT config has r = alpha = rank.
    `reconstruction_error` is ||exact merge - returned|| / ||exact merge|| over all modules
    together (Frobenius; 0.0 when exact or when the merge is zero).
    """

    modules: dict[str, tuple[np.ndarray, np.ndarray]]
    rank: int
    reconstruction_error: float
    per_module_error: dict[str, float]
    method: str
    params: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """Validated sources: float32 C-contiguous factors, the union of keys in first-seen order,
    and one (out, in) shape per key."""

    sources: list[dict[str, tuple[np.ndarray, np.ndarray, float]]]
    keys: list[str]
    shapes: dict[str, tuple[int, int]]

    def present(self, key: str) -> list[int]:
        """Indices of the sources that hold `key` (the others are zero for it)."""
        return [i for i, s in enumerate(self.sources) if key in s]

    def rank_of(self, i: int, key: str) -> int:
        return self.sources[i][key][0].shape[0]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def prepare(sources, *, n_required: int | None = None, method: str = "merge") -> Prepared:
    """Check the sources and convert their factors to float32 once."""
    if not isinstance(sources, (list, tuple)):
        raise MergeError(f"sources: expected a list of adapters (dicts), got {type(sources).__name__}")
    if len(sources) == 0:
        raise MergeError("sources: the list of adapters to merge is empty")
    if n_required is not None and len(sources) != n_required:
        raise MergeError(
            f"sources: {method} merges exactly {n_required} adapters, got {len(sources)}"
        )
    out_sources: list[dict] = []
    keys: list[str] = []
    shapes: dict[str, tuple[int, int]] = {}
    owner: dict[str, int] = {}
    for si, src in enumerate(sources):
        if not isinstance(src, dict):
            raise MergeError(f"sources[{si}]: expected a dict of module -> (A, B, scale), got {type(src).__name__}")
        conv = {}
        for key, val in src.items():
            where = f"sources[{si}][{key!r}]"
            try:
                a, b, scale = val
            except (TypeError, ValueError):
                raise MergeError(f"{where}: expected a tuple (A, B, scale)") from None
            a = np.asarray(a)
            b = np.asarray(b)
            if a.ndim != 2 or b.ndim != 2:
                raise MergeError(f"{where}: A and B must be 2-D, got A{a.shape} and B{b.shape}")
            if a.shape[0] != b.shape[1] or a.shape[0] < 1:
                raise MergeError(
                    f"{where}: rank mismatch, A is {a.shape} ([r, in]) but B is {b.shape} ([out, r])"
                )
            if not (np.issubdtype(a.dtype, np.floating) and np.issubdtype(b.dtype, np.floating)):
                raise MergeError(f"{where}: A and B must be floating point, got {a.dtype} and {b.dtype}")
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                raise MergeError(f"{where}: scale must be a number, got {scale!r}") from None
            if not math.isfinite(scale):
                raise MergeError(f"{where}: scale must be finite, got {scale}")
            a = np.ascontiguousarray(a, dtype=np.float32)
            b = np.ascontiguousarray(b, dtype=np.float32)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise MergeError(f"{where}: A or B holds NaN or infinite values")
            shape = (b.shape[0], a.shape[1])
            if key in shapes:
                if shapes[key] != shape:
                    raise MergeError(
                        f"module {key!r}: shape mismatch, sources[{owner[key]}] has (out, in) = "
                        f"{shapes[key]} but sources[{si}] has {shape}"
                    )
            else:
                shapes[key] = shape
                owner[key] = si
                keys.append(key)
            conv[key] = (a, b, scale)
        out_sources.append(conv)
    if not keys:
        raise MergeError("sources: no adapter holds any module, nothing to merge")
    return Prepared(out_sources, keys, shapes)


def check_weights(weights, n: int, *, default: float | None = 1.0) -> np.ndarray:
    """Per-source weights as float64 [n]; None gives `default` for each."""
    if weights is None:
        if default is None:
            raise MergeError("weights: required (one number per source)")
        return np.full(n, float(default))
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise MergeError(f"weights: expected {n} numbers, got {weights!r}") from None
    if w.size != n:
        raise MergeError(f"weights: expected one weight per source ({n}), got {w.size}")
    if not np.isfinite(w).all():
        raise MergeError(f"weights: must be finite, got {w.tolist()}")
    return w


def check_density(density) -> float:
    if density is None:
        raise MergeError("density: required, the fraction of entries to keep, in (0, 1]")
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise MergeError(f"density: expected a number in (0, 1], got {density!r}") from None
    if not (0.0 < d <= 1.0):
        raise MergeError(f"density: must be in (0, 1] (fraction of entries kept), got {d}")
    return d


def check_t(t) -> float:
    if t is None:
        raise MergeError("t: required, the interpolation position in [0, 1]")
    try:
        tt = float(t)
    except (TypeError, ValueError):
        raise MergeError(f"t: expected a number in [0, 1], got {t!r}") from None
    if not (0.0 <= tt <= 1.0):
        raise MergeError(f"t: must be in [0, 1], got {tt}")
    return tt


def check_lam(lam) -> float:
    try:
        v = float(lam)
    except (TypeError, ValueError):
        raise MergeError(f"lam: expected a number, got {lam!r}") from None
    if not math.isfinite(v):
        raise MergeError(f"lam: must be finite, got {v}")
    return v


def check_rank(rank) -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise MergeError(f"rank: expected a positive integer, got {rank!r}")
    if rank < 1:
        raise MergeError(f"rank: must be >= 1, got {rank}")
    return int(rank)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise MergeError(f"seed: expected an integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------
# Low-rank algebra
# --------------------------------------------------------------------------------------------


def lowrank_norm(a: np.ndarray, b: np.ndarray) -> float:
    """||B @ A||_F from the two r x r Gram matrices (no dense product)."""
    if a.shape[0] == 0:
        return 0.0
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    sq = float(np.sum((b64.T @ b64) * (a64 @ a64.T)))
    return math.sqrt(max(sq, 0.0))


def lowrank_inner(a1, b1, a2, b2) -> float:
    """<B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T)), without forming either product."""
    a1 = a1.astype(np.float64)
    a2 = a2.astype(np.float64)
    b1 = b1.astype(np.float64)
    b2 = b2.astype(np.float64)
    return float(np.sum((b1.T @ b2) * (a1 @ a2.T)))


def compress_lowrank(a_cat: np.ndarray, b_cat: np.ndarray, k: int):
    """Best rank-k approximation of B_cat @ A_cat via QR of both factors + SVD of the core.

    Returns (A_k [k', in] f32, B_k [out, k'] f32, residual norm, full norm) with k' <= k; the
    singular values are split as sqrt into both factors so they stay balanced.
    """
    qb, rb = np.linalg.qr(b_cat.astype(np.float64))  # out x m, m x R
    qa, ra = np.linalg.qr(a_cat.T.astype(np.float64))  # in x m', m' x R
    core = rb @ ra.T
    u, s, vt = np.linalg.svd(core, full_matrices=False)
    kk = min(k, s.size)
    root = np.sqrt(s[:kk])
    b_k = (qb @ (u[:, :kk] * root)).astype(np.float32)
    a_k = ((root[:, None] * vt[:kk]) @ qa.T).astype(np.float32)
    full = float(np.sqrt(np.sum(s * s)))
    resid = float(np.sqrt(np.sum(s[kk:] * s[kk:])))
    return a_k, b_k, resid, full


def truncate_dense(d: np.ndarray, k: int):
    """Best rank-k factors of a dense [out, in] delta (exact when k >= min(out, in)).

    The top-k singular subspace comes from LAPACK's symmetric eigensolver (syevr, top k pairs
    only) on the float64 Gram matrix of the smaller side, several times faster than a full SVD
    of the delta; the result is the projection of the delta onto it, so the residual is exact:
    ||D - D V V^T||^2 = ||D||^2 - ||D V||^2. Singular values are split as sqrt into both factors.
    Returns (A [k', in] f32, B [out, k'] f32, residual norm, full norm).
    """
    out_f, in_f = d.shape
    d64 = np.asarray(d, dtype=np.float64)
    full2 = float(np.einsum("ij,ij->", d64, d64))
    if full2 == 0.0:
        return np.zeros((0, in_f), np.float32), np.zeros((out_f, 0), np.float32), 0.0, 0.0
    full = math.sqrt(full2)
    if k >= min(out_f, in_f):
        # Full rank fits: factor trivially instead of decomposing.
        if out_f <= in_f:
            return d.astype(np.float32, copy=True), np.eye(out_f, dtype=np.float32), 0.0, full
        return np.eye(in_f, dtype=np.float32), d.astype(np.float32, copy=True), 0.0, full
    transpose = out_f < in_f  # work on the side with the smaller Gram matrix
    m = d64.T if transpose else d64  # [big, small]
    small = m.shape[1]
    # only the top k eigenpairs (LAPACK syevr), ascending
    _, vecs = scipy.linalg.eigh(m.T @ m, subset_by_index=[small - k, small - 1], driver="evr")
    v = np.ascontiguousarray(vecs[:, ::-1])  # [small, k], orthonormal, largest first
    mv = m @ v  # [big, k]: columns are U_k * S_k
    s = np.sqrt(np.einsum("ij,ij->j", mv, mv))
    kept2 = float(np.sum(s * s))
    root = np.sqrt(s)
    inv = np.divide(1.0, root, out=np.zeros_like(root), where=root > 0)
    left = (mv * inv).astype(np.float32)  # U_k sqrt(S)
    right = (root[:, None] * v.T).astype(np.float32)  # sqrt(S) V_k^T
    resid = math.sqrt(max(full2 - kept2, 0.0))
    if transpose:  # d = m.T ~ (left right).T = right.T left.T
        return np.ascontiguousarray(left.T), np.ascontiguousarray(right.T), resid, full
    return right, left, resid, full


def finish(prep: Prepared, factors: dict, norms: dict, resids: dict, rank: int, method: str,
           params: dict) -> MergeResult:
    """Zero-pad every module to `rank`, add up the errors, build the result."""
    modules = {}
    per_module = {}
    num = 0.0
    den = 0.0
    for key in prep.keys:
        a, b = factors[key]
        out_f, in_f = prep.shapes[key]
        r = a.shape[0]
        if r > rank:
            raise AssertionError(f"module {key} has rank {r} > {rank}")
        a_out = np.zeros((rank, in_f), dtype=np.float32)
        b_out = np.zeros((out_f, rank), dtype=np.float32)
        a_out[:r] = a
        b_out[:, :r] = b
        modules[key] = (a_out, b_out)
        full = norms[key]
        res = resids[key]
        per_module[key] = float(res / full) if full > 0 and res > 0 else 0.0
        num += res * res
        den += full * full
    err = float(math.sqrt(num) / math.sqrt(den)) if den > 0 and num > 0 else 0.0
    return MergeResult(modules, int(rank), err, per_module, method, params)


def linear_merge(prep: Prepared, coeffs: dict[str, list[float]] | list[float], rank: int | None,
                 method: str, params: dict) -> MergeResult:
    """Merge sum_i c_i * delta_i per module by concatenating factors (exact), compressing only
    modules whose summed rank exceeds the requested `rank`.

    `coeffs` is one list of per-source coefficients, or a dict key -> list (per-module, slerp).
    """
    terms = {}
    exact_rank = {}
    for key in prep.keys:
        c = coeffs[key] if isinstance(coeffs, dict) else coeffs
        a_parts, b_parts = [], []
        for i in prep.present(key):
            ci = float(c[i])
            if ci == 0.0:
                continue
            a, b, s = prep.sources[i][key]
            a_parts.append(a)
            b_parts.append(b * np.float32(ci * s))
        terms[key] = (a_parts, b_parts)
        exact_rank[key] = sum(a.shape[0] for a in a_parts)
    out_rank = rank if rank is not None else max(1, max(exact_rank.values()))
    factors, norms, resids = {}, {}, {}
    compressed = []
    for key in prep.keys:
        out_f, in_f = prep.shapes[key]
        a_parts, b_parts = terms[key]
        if not a_parts:
            factors[key] = (np.zeros((0, in_f), np.float32), np.zeros((out_f, 0), np.float32))
            norms[key] = resids[key] = 0.0
            continue
        a_cat = np.vstack(a_parts)
        b_cat = np.hstack(b_parts)
        if exact_rank[key] <= out_rank:
            factors[key] = (a_cat, b_cat)
            norms[key] = lowrank_norm(a_cat, b_cat)
            resids[key] = 0.0
        else:
            a_k, b_k, res, full = compress_lowrank(a_cat, b_cat, out_rank)
            factors[key] = (a_k, b_k)
            norms[key] = full
            resids[key] = res
            compressed.append(key)
    params = dict(params)
    params["rank"] = rank
    params["compressed_modules"] = compressed
    return finish(prep, factors, norms, resids, out_rank, method, params)


def dense_target_rank(prep: Prepared, rank: int | None) -> int:
    """Rank the dense paths truncate to: requested, else the largest summed source rank."""
    if rank is not None:
        return rank
    best = 1
    for key in prep.keys:
        out_f, in_f = prep.shapes[key]
        r = sum(prep.rank_of(i, key) for i in prep.present(key))
        best = max(best, min(r, out_f, in_f))
    return best


class DenseBuffers:
    """Reusable [T, out*in] stacks and [out*in] outputs, one per shape, for the module loop."""

    def __init__(self):
        self._stacks: dict[tuple, np.ndarray] = {}
        self._outs: dict[tuple, np.ndarray] = {}

    def stack(self, ntask: int, n: int) -> np.ndarray:
        key = (ntask, n)
        if key not in self._stacks:
            self._stacks[key] = np.empty((ntask, n), dtype=np.float32)
        return self._stacks[key]

    def out(self, n: int) -> np.ndarray:
        if n not in self._outs:
            self._outs[n] = np.empty(n, dtype=np.float32)
        return self._outs[n]


def fill_deltas(prep: Prepared, key: str, idx: list[int], stack: np.ndarray) -> None:
    """stack[j] = dense delta s_i * B_i @ A_i of source idx[j] (float32 GEMM into place)."""
    out_f, in_f = prep.shapes[key]
    for j, i in enumerate(idx):
        a, b, s = prep.sources[i][key]
        np.matmul(b * np.float32(s), a, out=stack[j].reshape(out_f, in_f))


def dense_merge(prep: Prepared, rank: int | None, method: str, params: dict, combine,
                stacked: bool = True) -> MergeResult:
    """Per module: form the present sources' dense deltas into a reused [T, out*in] stack, let
    `combine(key, idx, stack, out)` write the merged delta into the reused `out`, and truncate
    it to the target rank (`truncate_dense`). With stacked=False no stack is formed (stack is None) and
    `combine` builds `out` itself."""
    target = dense_target_rank(prep, rank)
    bufs = DenseBuffers()
    factors, norms, resids = {}, {}, {}
    for key in prep.keys:
        out_f, in_f = prep.shapes[key]
        idx = prep.present(key)
        n = out_f * in_f
        out = bufs.out(n)
        stack = None
        if stacked:
            stack = bufs.stack(len(idx), n)
            fill_deltas(prep, key, idx, stack)
        combine(key, idx, stack, out)
        k = min(target, out_f, in_f)
        a_k, b_k, res, full = truncate_dense(out.reshape(out_f, in_f), k)
        factors[key] = (a_k, b_k)
        norms[key] = full
        resids[key] = res
    params = dict(params)
    params["rank"] = rank
    return finish(prep, factors, norms, resids, target, method, params)
