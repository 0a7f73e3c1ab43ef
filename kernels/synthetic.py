"""Seeded synthetic task data with a known answer, and validation of user-supplied arrays.

What a task's data is (DESIGN.md section 2):

- Inputs. Each example `i` has an amplitude `a_i` (and, for some tasks, an offset `b_i`), shared by
  all its layers and input kinds, as a real example's activations share its "loudness". For each
  (layer, input kind) the `in` coordinates are partitioned into `d_lat` latent groups `c(j)`; each
  coordinate has a sign and its group's scale, `s_j = +-scale_{c(j)}`, and
  `x_ij = a_i * s_j * (z_{i,c(j)} + b_i)` with `z` drawn from the task's latent family (uniform,
  triangular, sparse, peaked). So the inputs live on a `d_lat`-dimensional subspace (real
  activations are strongly low-rank), which is what makes a rank-r delta identifiable from 800
  training rows even for the 3072-wide `mlp_act` input. Scales are per group, not per coordinate,
  on purpose: the subspace is then invariant under Adam's per-coordinate preconditioner, so Adam
  never moves A in directions the data cannot see, and the Frobenius error against the truth is
  meaningful (with per-coordinate scales Adam leaks updates there and the error is noise).
- Tasks really differ: latent family, latent size, amplitude range, sign pattern and offsets come
  from the task's profile (a stable FNV-1a hash of the name for custom tasks, never Python's
  `hash()`), and every partition, scale and draw is keyed by (seed, task, layer, kind).
- Quality: the task's formula (kernels.quality) on the layer-0 `hidden` input.
- Truth: per (layer, module) a rank-`k` delta `U @ V` (`k = max(1, rank // 2)`, at most the preset
  rank): `V [k, in]` has unit rows inside the input subspace, `U [out, k]` has columns of norm
  `truth_scale * (1 - t / (2k))`. It is stored as the factors (U, V), not the dense matrix.
- Targets: `R = X @ V.T @ U.T + noise` (V x is evaluated in latent coordinates, equal to X @ V.T
  up to float32 rounding), noise uniform with per-example std
  `noise_std_i = noise * (1 + 4 * (1 - q_i))`: low-quality examples are noisier, so weighting by
  quality helps. `noise_floor` is the quality-weighted mean of `noise_std^2` over the validation
  rows: the expected weighted validation loss (per output element) of the truth itself.

Units: `truth_scale` is large (400) because LoRA's Kaiming-initialised A keeps whatever it starts
with in directions the data never excite; only a delta that is large next to that leftover makes
"relative Frobenius error < 0.1" achievable. Targets are therefore ~O(100) per element and the
noise floor ~O(30); only ratios (val / floor, delta error) mean anything.

Memory: all input and target arrays of a task are views into one float32 block (one large
allocation instead of dozens of fresh 3 MB ones, whose page faults cost more than the arithmetic);
the block is freed when the last of them is.

Everything is a pure function of (seed, task, layer, kind/module, row, column) through a
counter-based splitmix64 hash, so rows are generated in parallel and the result is bit-identical
for a seed whatever the thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from ruv_kernels.fastmath import FASTMATH_APPROX
from ruv_kernels.hashing import mix64 as _mix64
from ruv_kernels.hashing import name_hash as stable_hash
from ruv_kernels.hashing import mix64_py as _mix_py
from ruv_kernels.modules import ALL_MODULES, INPUT_KIND, module_shape
from ruv_kernels.quality import quality_scores

INPUT_KINDS = ("hidden", "attn_out", "mlp_act")

DEFAULT_NOISE = 3.0
DEFAULT_TRUTH_SCALE = 400.0
NOISE_SLOPE = 4.0  # noise_std = noise * (1 + NOISE_SLOPE * (1 - q))
TRAIN_FRACTION = 0.8

_MASK = 0xFFFFFFFFFFFFFFFF
_GOLDEN_PY = 0x9E3779B97F4A7C15
_GOLDEN = np.uint64(_GOLDEN_PY)

# latent families
_UNIFORM, _TRIANGULAR, _SPARSE, _PEAKED = 0, 1, 2, 3


# ----------------------------------------------------------------------------------------------
# hashing


def _derive(*parts: int) -> int:
    """Key for a stream: a chain of splitmix64 over the parts (order matters)."""
    k = 0x243F6A8885A308D3
    for p in parts:
        k = _mix_py(k ^ _mix_py((int(p) + _GOLDEN_PY) & _MASK))
    return k


@njit(cache=True, inline="always")
def _bits(key, counter):
    return _mix64(key + (counter + np.uint64(1)) * _GOLDEN)


@njit(cache=True, inline="always")
def _u01(key, counter):
    """Uniform float32 in [0, 1) with 24 random bits."""
    return np.float32(np.int64(_bits(key, counter) >> np.uint64(40))) * np.float32(2.0 ** -24)


@njit(cache=True, inline="always")
def _u2(key, counter):
    """Two uniforms in [-1, 1) from one hash (upper and lower 24-bit halves)."""
    b = _bits(key, counter)
    hi = np.float32(np.int64(b >> np.uint64(40))) * np.float32(2.0 ** -23) - np.float32(1.0)
    lo = np.float32(np.int64((b >> np.uint64(8)) & np.uint64(0xFFFFFF))) * np.float32(2.0 ** -23) - np.float32(1.0)
    return hi, lo


# ----------------------------------------------------------------------------------------------
# kernels


@njit(cache=True)
def _permutation(n, key):
    """Seeded Fisher-Yates shuffle of 0..n-1."""
    p = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = np.int64(_bits(key, np.uint64(i)) % np.uint64(i + 1))
        t = p[i]
        p[i] = p[j]
        p[j] = t
    return p


@njit(cache=True)
def _layout(d, d_lat, key, positive, scale_lo, scale_hi):
    """Partition of the `d` coordinates into `d_lat` non-empty groups, signed per-group scales.

    Returns group [d] int64, sign-scaled s [d] float32, S [d_lat] float32 = sum over the group of s^2.
    """
    perm = _permutation(d, key)
    group = np.empty(d, np.int32)
    for j in range(d):
        group[perm[j]] = j % d_lat
    scale = np.empty(d_lat, np.float32)
    for c in range(d_lat):
        scale[c] = scale_lo + (scale_hi - scale_lo) * _u01(key ^ np.uint64(0x5CA1E), np.uint64(c))
    s = np.empty(d, np.float32)
    S = np.zeros(d_lat, np.float32)
    for j in range(d):
        v = scale[group[j]]
        if not positive and (_bits(key ^ np.uint64(0x51C9), np.uint64(j)) >> np.uint64(63)) != np.uint64(0):
            v = -v
        s[j] = v
        S[group[j]] += v * v
    return group, s, S


@njit(cache=True, inline="always")
def _family_pair(family, sparsity, key, ctr):
    """Two latent draws of the task's family (one hash for uniform, two otherwise)."""
    u, v = _u2(key, ctr)
    if family == 0:  # uniform on [-1, 1)
        return u, v
    u2, v2 = _u2(key ^ np.uint64(0x7A1), ctr)
    if family == 1:  # triangular on [-1, 1)
        return np.float32(0.5) * (u + v), np.float32(0.5) * (u2 + v2)
    if family == 2:  # sparse: zero with probability `sparsity`, else a wide uniform
        z0 = np.float32(0.0) if np.float32(0.5) * (v + np.float32(1.0)) < sparsity else np.float32(1.4) * u
        z1 = np.float32(0.0) if np.float32(0.5) * (v2 + np.float32(1.0)) < sparsity else np.float32(1.4) * u2
        return z0, z1
    # peaked (Laplace-like, density ~ -log|z|): a product of two uniforms, scaled to unit-ish spread
    return np.float32(1.7) * u * abs(v), np.float32(1.7) * u2 * abs(v2)


@njit(cache=True, parallel=True)
def _latents(zb, key, family, sparsity, amp, off):
    """zb[i, c] = a_i * (z_ic + b_i) with z from the task's latent family, keyed by (row, latent).

    The family switch sits outside the row loop (one specialised loop per family): inside it the
    compiler would evaluate every branch's hashes and logarithms for every entry.
    """
    n, d_lat = zb.shape
    half = (d_lat + 1) // 2
    for i in prange(n):
        a = amp[i]
        b = off[i]
        base = np.uint64(i) * np.uint64(half)
        row = zb[i]
        if family == 0:
            for h in range(half):
                z0, z1 = _family_pair(0, sparsity, key, base + np.uint64(h))
                row[2 * h] = a * (z0 + b)
                if 2 * h + 1 < d_lat:
                    row[2 * h + 1] = a * (z1 + b)
        elif family == 1:
            for h in range(half):
                z0, z1 = _family_pair(1, sparsity, key, base + np.uint64(h))
                row[2 * h] = a * (z0 + b)
                if 2 * h + 1 < d_lat:
                    row[2 * h + 1] = a * (z1 + b)
        elif family == 2:
            for h in range(half):
                z0, z1 = _family_pair(2, sparsity, key, base + np.uint64(h))
                row[2 * h] = a * (z0 + b)
                if 2 * h + 1 < d_lat:
                    row[2 * h + 1] = a * (z1 + b)
        else:
            for h in range(half):
                z0, z1 = _family_pair(3, sparsity, key, base + np.uint64(h))
                row[2 * h] = a * (z0 + b)
                if 2 * h + 1 < d_lat:
                    row[2 * h + 1] = a * (z1 + b)


@njit(cache=True, parallel=True, fastmath=FASTMATH_APPROX)
def _fill_inputs(X, zb, group, s):
    """x_ij = s_j * zb[i, c(j)]  (= a_i * s_j * (z_{i,c(j)} + b_i))."""
    n, d = X.shape
    for i in prange(n):
        row = X[i]
        zr = zb[i]
        for j in range(d):
            row[j] = s[j] * zr[group[j]]


@njit(cache=True)
def _truth_factors(d_in, d_out, k, group, s, S, key, truth_scale):
    """U^T [k, out] (row norms truth_scale * (1 - t/2k)) and V [k, in] with unit rows in the span.

    Also returns G [k, d_lat] = g * S so that V @ x = a * G @ (z + b) in latent coordinates.
    """
    d_lat = S.shape[0]
    g = np.empty((k, d_lat), np.float64)
    for t in range(k):
        norm2 = 0.0
        for c in range(d_lat):
            u, v = _u2(key, np.uint64(t * d_lat + c))
            g[t, c] = 0.5 * (u + v)
            norm2 += g[t, c] * g[t, c] * S[c]
        inv = 1.0 / math.sqrt(max(norm2, 1e-30))
        for c in range(d_lat):
            g[t, c] *= inv
    V = np.empty((k, d_in), np.float32)
    for t in range(k):
        for j in range(d_in):
            V[t, j] = g[t, group[j]] * s[j]
    G = np.empty((k, d_lat), np.float32)
    for t in range(k):
        for c in range(d_lat):
            G[t, c] = g[t, c] * S[c]
    ukey = key ^ np.uint64(0xB0B0)
    Ut = np.zeros(((k + 3) // 4 * 4, d_out), np.float32)
    for t in range(k):
        norm2 = 0.0
        for o in range(d_out):
            u, v = _u2(ukey, np.uint64(t * d_out + o))
            Ut[t, o] = u
            norm2 += np.float64(u) * u
        target = truth_scale * (1.0 - t / (2.0 * k))
        f = target / math.sqrt(max(norm2, 1e-30))
        for o in range(d_out):
            Ut[t, o] = np.float32(Ut[t, o] * f)
    return Ut, V, G


@njit(cache=True, parallel=True, fastmath=FASTMATH_APPROX)
def _fill_targets(R, Ut, G, zb, sigma, key, T):
    """R = (V x) U^T + uniform noise of std sigma_i, each row written in as few passes as possible.

    V x = G @ zb_i is computed in latent coordinates. One splitmix64 hash gives two 24-bit
    uniforms, written to the two halves of the row (unit-stride stores); the signal is added four
    rank components per pass. Ut has a multiple of 4 rows (zero-padded) and T [n, rows of Ut] is
    preallocated scratch.
    """
    n, d_out = R.shape
    k4 = Ut.shape[0]
    k = G.shape[0]
    d_lat = zb.shape[1]
    root3 = np.float32(math.sqrt(3.0))
    half = d_out // 2
    for i in prange(n):
        for t in range(k4):
            acc = np.float32(0.0)
            if t < k:
                for c in range(d_lat):
                    acc += G[t, c] * zb[i, c]
            T[i, t] = acc
        sc = sigma[i] * root3
        row = R[i]
        rkey = _mix64(key + np.uint64(i + 1) * _GOLDEN)
        t0 = T[i, 0]
        t1 = T[i, 1]
        t2 = T[i, 2]
        t3 = T[i, 3]
        u0 = Ut[0]
        u1 = Ut[1]
        u2 = Ut[2]
        u3 = Ut[3]
        for h in range(half):
            bits = _mix64(rkey + np.uint64(h))
            u = np.float32(np.int64(bits >> np.uint64(40))) * np.float32(2.0 ** -23) - np.float32(1.0)
            v = np.float32(np.int64((bits >> np.uint64(8)) & np.uint64(0xFFFFFF))) * np.float32(2.0 ** -23) - np.float32(1.0)
            o = h + half
            row[h] = sc * u + u0[h] * t0 + u1[h] * t1 + u2[h] * t2 + u3[h] * t3
            row[o] = sc * v + u0[o] * t0 + u1[o] * t1 + u2[o] * t2 + u3[o] * t3
        if d_out % 2 == 1:
            o = d_out - 1
            bits = _mix64(rkey + np.uint64(half))
            u = np.float32(np.int64(bits >> np.uint64(40))) * np.float32(2.0 ** -23) - np.float32(1.0)
            row[o] = sc * u + u0[o] * t0 + u1[o] * t1 + u2[o] * t2 + u3[o] * t3
        for tb in range(4, k4, 4):
            t0 = T[i, tb]
            t1 = T[i, tb + 1]
            t2 = T[i, tb + 2]
            t3 = T[i, tb + 3]
            u0 = Ut[tb]
            u1 = Ut[tb + 1]
            u2 = Ut[tb + 2]
            u3 = Ut[tb + 3]
            for o in range(d_out):
                row[o] += u0[o] * t0 + u1[o] * t1 + u2[o] * t2 + u3[o] * t3


@njit(cache=True, parallel=True)
def _example_params(n, key, amp_lo, amp_hi, off_max):
    amp = np.empty(n, np.float32)
    off = np.empty(n, np.float32)
    for i in prange(n):
        u, v = _u2(key, np.uint64(i))
        amp[i] = amp_lo + (amp_hi - amp_lo) * np.float32(0.5) * (u + np.float32(1.0))
        off[i] = off_max * v
    return amp, off


@njit(cache=True)
def _noise_std(q, noise, slope):
    out = np.empty(q.shape[0], np.float32)
    for i in range(q.shape[0]):
        out[i] = np.float32(noise * (1.0 + slope * (1.0 - q[i])))
    return out


# ----------------------------------------------------------------------------------------------
# task profiles


@dataclass(frozen=True)
class TaskProfile:
    """The input distribution of a task: latent family and size, amplitude range, signs, offsets."""

    family: int
    latent: int
    amp_lo: float
    amp_hi: float
    off_max: float = 0.0
    positive: bool = False
    sparsity: float = 0.0
    scale_lo: float = 0.5
    scale_hi: float = 1.5


_PROFILES = {
    # amplitude drives mean |x| and so the coder/researcher/security quality
    "coder": TaskProfile(_UNIFORM, 48, 0.1, 2.0),
    "researcher": TaskProfile(_TRIANGULAR, 40, 0.1, 2.2),
    "security": TaskProfile(_SPARSE, 64, 0.2, 2.6, sparsity=0.4),
    # architect's quality falls with neighbour differences, which scale with amplitude
    "architect": TaskProfile(_PEAKED, 56, 0.1, 1.6),
    # reviewer's quality falls with |mean x|: positive signs plus a per-example offset
    "reviewer": TaskProfile(_UNIFORM, 32, 0.5, 1.5, off_max=0.9, positive=True),
}


def task_profile(task: str) -> TaskProfile:
    """The built-in profile of a preset task, or one derived from the stable hash of the name."""
    if task in _PROFILES:
        return _PROFILES[task]
    h = stable_hash(task)
    family = h % 4
    latent = 24 + 8 * ((h >> 8) % 6)
    amp_lo = 0.1 + 0.1 * ((h >> 16) % 3)
    amp_hi = 1.4 + 0.2 * ((h >> 24) % 4)
    return TaskProfile(int(family), int(latent), amp_lo, amp_hi, sparsity=0.4 if family == _SPARSE else 0.0)


# ----------------------------------------------------------------------------------------------
# the task


@dataclass
class SyntheticTask:
    """A task's dataset with its known answer.

    inputs:  "layers.{i}.{kind}"   -> X [n, in]  float32 (only kinds the targets need)
    targets: "layers.{i}.{module}" -> R [n, out] float32
    truth:   "layers.{i}.{module}" -> (U [out, k], V [k, in]) float32; the true delta is U @ V
    quality, noise_std: [n] float32; train_idx, val_idx: int64 row indices (80/20, seeded shuffle)
    noise_floor: quality-weighted mean of noise_std^2 over val_idx (per output element).
    """

    task: str
    seed: int
    modules: tuple[str, ...]
    rank: int
    truth_rank: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    noise: float
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    truth: dict[str, tuple[np.ndarray, np.ndarray]]
    quality: np.ndarray
    noise_std: np.ndarray
    noise_floor: float
    train_idx: np.ndarray
    val_idx: np.ndarray
    profile: TaskProfile = field(repr=False, default=None)

    @property
    def n_examples(self) -> int:
        return int(self.quality.shape[0])

    def input_key(self, target_key: str) -> str:
        """"layers.3.o_proj" -> "layers.3.attn_out"."""
        prefix, module = target_key.rsplit(".", 1)
        return f"{prefix}.{INPUT_KIND[module]}"

    def dense_truth(self, key: str) -> np.ndarray:
        U, V = self.truth[key]
        return U @ V

    def delta_errors(self, A: dict, B: dict, scale: float) -> dict[str, float]:
        """Per module ||s B A - U V||_F^2 and ||U V||_F^2, from r x r / k x k Gram matrices (no dense delta)."""
        out = {}
        for key, (U, V) in self.truth.items():
            a = np.asarray(A[key], np.float64)
            b = np.asarray(B[key], np.float64) * scale
            u = U.astype(np.float64)
            v = V.astype(np.float64)
            ba = np.trace((b.T @ b) @ (a @ a.T))
            cross = np.trace((u.T @ b) @ (a @ v.T))
            uv = np.trace((u.T @ u) @ (v @ v.T))
            out[key] = (max(ba - 2.0 * cross + uv, 0.0), uv)
        return out

    def delta_relative_error(self, A: dict, B: dict, scale: float) -> float:
        """Relative Frobenius error of the learned deltas against the truth, pooled over all modules:
        sqrt(sum ||s B A - U V||^2 / sum ||U V||^2)."""
        errs = self.delta_errors(A, B, scale)
        num = sum(e for e, _ in errs.values())
        den = sum(t for _, t in errs.values())
        return math.sqrt(num / den) if den > 0 else float("nan")


def generate_task(
    task: str,
    targets: list[str] | tuple[str, ...],
    rank: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    n_examples: int,
    seed: int,
    noise: float = DEFAULT_NOISE,
    truth_scale: float = DEFAULT_TRUTH_SCALE,
    q_size: int | None = None,
    kv_size: int | None = None,
) -> SyntheticTask:
    """Generate a task's seeded dataset and its ground truth (see the module docstring)."""
    if not task:
        raise ValueError("task name must be non-empty")
    modules = tuple(targets)
    if not modules:
        raise ValueError("targets must name at least one module")
    for m in modules:
        if m not in INPUT_KIND:
            raise ValueError(f"targets: unknown module {m!r}; expected one of {', '.join(ALL_MODULES)}")
    if len(set(modules)) != len(modules):
        raise ValueError(f"targets: duplicate module in {list(modules)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if hidden_size < 2 or intermediate_size < 2:
        raise ValueError(f"hidden_size and intermediate_size must be >= 2, got {hidden_size}, {intermediate_size}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if n_examples < 5:
        raise ValueError(f"n_examples must be >= 5 (80/20 split), got {n_examples}")
    if not (noise >= 0.0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    if not (truth_scale > 0.0 and math.isfinite(truth_scale)):
        raise ValueError(f"truth_scale must be a finite number > 0, got {truth_scale}")

    prof = task_profile(task)
    th = stable_hash(task)
    seed = int(seed)
    n = int(n_examples)
    k = max(1, rank // 2)

    amp, off = _example_params(n, np.uint64(_derive(seed, th, 1)), np.float32(prof.amp_lo),
                               np.float32(prof.amp_hi), np.float32(prof.off_max))

    needed_kinds = {INPUT_KIND[m] for m in modules}
    dims = {"hidden": hidden_size, "attn_out": q_size or hidden_size, "mlp_act": intermediate_size}

    # Every output array is a view into one block: one large allocation (which numpy backs with
    # huge pages) instead of dozens of fresh 3 MB ones, whose page faults cost more than the math.
    plan: list[tuple[str, int]] = []
    for layer in range(num_layers):
        for kind in INPUT_KINDS:
            if kind in needed_kinds:
                plan.append((f"layers.{layer}.{kind}", dims[kind]))
        for m in modules:
            plan.append((f"layers.{layer}.{m}", module_shape(m, hidden_size, intermediate_size, q_size, kv_size)[1]))
    if "hidden" not in needed_kinds:
        plan.append(("quality-input", hidden_size))
    block = np.empty(n * sum(w for _, w in plan), np.float32)
    views: dict[str, np.ndarray] = {}
    off_ = 0
    for name, w in plan:
        views[name] = block[off_:off_ + n * w].reshape(n, w)
        off_ += n * w

    inputs: dict[str, np.ndarray] = {}
    latent: dict[str, tuple] = {}
    quality = None
    for layer in range(num_layers):
        kinds = [kd for kd in INPUT_KINDS if kd in needed_kinds or (layer == 0 and kd == "hidden")]
        for kind in kinds:
            d = dims[kind]
            d_lat = max(1, min(prof.latent, d // 2, n // 4))
            key = _derive(seed, th, 2, layer, INPUT_KINDS.index(kind))
            group, s, S = _layout(d, d_lat, np.uint64(key), prof.positive,
                                  np.float32(prof.scale_lo), np.float32(prof.scale_hi))
            zb = np.empty((n, d_lat), np.float32)
            _latents(zb, np.uint64(_derive(key, 3)), prof.family, np.float32(prof.sparsity), amp, off)
            name = f"layers.{layer}.{kind}"
            X = views[name] if kind in needed_kinds else views["quality-input"]
            _fill_inputs(X, zb, group, s)
            if layer == 0 and kind == "hidden":
                quality = quality_scores(task, X, seed=_derive(seed, th, 4))
            if kind in needed_kinds:
                inputs[name] = X
                latent[name] = (group, s, S, zb)

    noise_std = _noise_std(quality, np.float64(noise), np.float64(NOISE_SLOPE))

    perm = _permutation(n, np.uint64(_derive(seed, th, 5)))
    n_train = int(round(TRAIN_FRACTION * n))
    train_idx = np.sort(perm[:n_train])
    val_idx = np.sort(perm[n_train:])

    scratch = np.empty((n, (k + 3) // 4 * 4), np.float32)
    out_targets: dict[str, np.ndarray] = {}
    truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in range(num_layers):
        for m in modules:
            d_in, d_out = module_shape(m, hidden_size, intermediate_size, q_size, kv_size)
            group, s, S, zb = latent[f"layers.{layer}.{INPUT_KIND[m]}"]
            mkey = _derive(seed, th, 6, layer, ALL_MODULES.index(m))
            Ut, V, G = _truth_factors(d_in, d_out, k, group, s, S, np.uint64(mkey), np.float64(truth_scale))
            key = f"layers.{layer}.{m}"
            R = views[key]
            _fill_targets(R, Ut, G, zb, noise_std, np.uint64(_derive(mkey, 7)), scratch)
            out_targets[key] = R
            truth[key] = (np.ascontiguousarray(Ut[:k].T), V)

    qv = quality[val_idx].astype(np.float64)
    sv = noise_std[val_idx].astype(np.float64)
    noise_floor = float((qv * sv * sv).sum() / qv.sum()) if qv.sum() > 0 else float("nan")

    return SyntheticTask(
        task=task, seed=seed, modules=modules, rank=int(rank), truth_rank=k,
        hidden_size=int(hidden_size), intermediate_size=int(intermediate_size), num_layers=int(num_layers),
        noise=float(noise), inputs=inputs, targets=out_targets, truth=truth, quality=quality,
        noise_std=noise_std, noise_floor=noise_floor, train_idx=train_idx, val_idx=val_idx, profile=prof,
    )
