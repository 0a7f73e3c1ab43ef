"""Every merge parameter's check, and which parameters each method takes and needs: one place
for `merge()`, the CLI and the catalogue."""

from __future__ import annotations

import math

import numpy as np

from ruv_kernels.merge.result import MergeError

COMBINES = ("linear", "ties")  # DARE's combine step
# merge()'s keyword defaults: a value different from these counts as "given".
PARAM_DEFAULTS = {"weights": None, "density": None, "lam": 1.0, "t": None, "rank": None,
                  "seed": 0, "dare_combine": "linear"}


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


def check_combine(dare_combine) -> str:
    if dare_combine not in COMBINES:
        raise MergeError(f"dare_combine: must be one of {', '.join(COMBINES)}, got {dare_combine!r}")
    return dare_combine


def given(name: str, value) -> bool:
    """Whether a parameter was set (differs from merge()'s default)."""
    default = PARAM_DEFAULTS[name]
    if default is None:
        return value is not None
    try:
        return bool(value != default)
    except Exception:  # e.g. an array compared to a float
        return True


def check_method_params(method: str, takes: tuple[str, ...], requires: tuple[str, ...], values: dict) -> None:
    """MergeError for a parameter the method does not take, or one it requires and lacks.

    `values` maps parameter names (of PARAM_DEFAULTS) to what was given; absent names count as
    their default."""
    extra = [p for p, v in values.items() if p not in takes and given(p, v)]
    if extra:
        raise MergeError(
            f"{extra[0]}: method {method!r} does not take {', '.join(extra)} "
            f"(it takes: {', '.join(takes) or 'nothing'})"
        )
    missing = [p for p in requires if values.get(p, PARAM_DEFAULTS[p]) is None]
    if missing:
        raise MergeError(f"{missing[0]}: method {method!r} requires {', '.join(missing)}")


def check_sparse(n_sources: int, *, density, weights, lam, rank):
    """The checked parameters of the sparsifying methods (ties, dare, magnitude_prune,
    prune_merged): (density, weights [n], lam, rank, the params a MergeResult records)."""
    density = check_density(density)
    lam = check_lam(lam)
    rank = check_rank(rank)
    w = check_weights(weights, n_sources, default=1.0)
    return density, w, lam, rank, {"density": density, "weights": [float(x) for x in w], "lam": lam}
