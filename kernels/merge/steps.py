"""The dense merge methods as compositions of small pure steps (as PEFT's `merge_utils`): the
reference that the fused kernels (`generalized`, `fused`) are tested equal to.

Every step takes float32 arrays (a task's delta, or a [T, ...] stack of them) and returns a new
array; nothing is modified in place. Ties at a magnitude threshold are all kept, a zero summed
mass elects +, and an entry no task agrees on is 0 (never NaN), as in the kernels.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.hashing import GOLDEN


def magnitude_mask(x: np.ndarray, density: float) -> np.ndarray:
    """True for the top int(density * size) entries of |x| (and every entry tied with the last)."""
    flat = np.abs(np.asarray(x, np.float32)).reshape(-1)
    k = int(density * flat.size)
    if k <= 0:
        return np.zeros(np.shape(x), bool)
    kth = np.partition(flat, flat.size - k)[flat.size - k]
    return np.abs(x) >= kth


def prune_magnitude(x: np.ndarray, density: float) -> np.ndarray:
    """x with all but its top-density magnitudes zeroed (PEFT `magnitude_based_pruning`)."""
    x = np.asarray(x, np.float32)
    return np.where(magnitude_mask(x, density), x, np.float32(0.0)) if density < 1.0 else x.copy()


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def random_mask(n: int, density: float, key: int) -> np.ndarray:
    """DARE's keep mask of n entries for stream `key`: entry p is kept iff the top 32 bits of
    splitmix64(key + (p + 1) * GOLDEN) fall below floor(density * 2**32)."""
    threshold = np.uint64(min(1 << 32, int(float(density) * 4294967296.0)))
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN))
        return (_splitmix64(z) >> np.uint64(32)) < threshold


def prune_random(x: np.ndarray, density: float, key: int) -> np.ndarray:
    """DARE: drop entries by `random_mask`, divide the kept ones by density."""
    x = np.asarray(x, np.float32)
    keep = random_mask(x.size, density, key).reshape(x.shape)
    return np.where(keep, x / np.float32(density), np.float32(0.0))


def elect_sign(stack: np.ndarray) -> np.ndarray:
    """+1 where the summed mass over tasks is >= 0, else -1 (PEFT's "total" method)."""
    mass = np.zeros(stack.shape[1:], np.float32)
    for t in stack:  # task order, as the kernels add
        mass = mass + t
    return np.where(mass >= 0, np.float32(1.0), np.float32(-1.0))


def disjoint_merge(stack: np.ndarray, weights, sign: np.ndarray) -> np.ndarray:
    """Mean of weights[i] * stack[i] over the tasks whose entry is nonzero with the elected sign."""
    acc = np.zeros(stack.shape[1:], np.float32)
    count = np.zeros(stack.shape[1:], np.float32)
    for w, t in zip(np.asarray(weights, np.float32), stack):
        agree = (t * sign) > 0
        acc = acc + np.where(agree, w * t, np.float32(0.0))
        count = count + agree
    return acc / np.maximum(count, np.float32(1.0))


def weighted_sum(stack: np.ndarray, weights) -> np.ndarray:
    """sum_i weights[i] * stack[i]."""
    out = np.zeros(stack.shape[1:], np.float32)
    for w, t in zip(np.asarray(weights, np.float32), stack):
        out = out + w * t
    return out


def ties(stack, density, weights, lam=1.0):
    """TIES: prune each task by magnitude, elect signs on the pruned (unweighted) tasks, disjoint
    mean of the weighted ones, times lam."""
    pruned = np.stack([prune_magnitude(t, density) for t in stack])
    return np.float32(lam) * disjoint_merge(pruned, weights, elect_sign(pruned))


def dare_linear(stack, density, keys, weights, lam=1.0):
    """DARE each task, then the weighted sum, times lam."""
    dropped = np.stack([prune_random(t, density, k) for t, k in zip(stack, keys)])
    return weighted_sum(dropped, np.float32(lam) * np.asarray(weights, np.float32))


def dare_ties(stack, density, keys, weights, lam=1.0):
    """DARE each task, then TIES' sign election and disjoint mean (no magnitude trim), times lam."""
    dropped = np.stack([prune_random(t, density, k) for t, k in zip(stack, keys)])
    return np.float32(lam) * disjoint_merge(dropped, weights, elect_sign(dropped))


def magnitude_prune(stack, density, weights, lam=1.0):
    """PEFT's `magnitude_prune`: prune each task by magnitude, then the weighted sum, times lam."""
    pruned = np.stack([prune_magnitude(t, density) for t in stack])
    return weighted_sum(pruned, np.float32(lam) * np.asarray(weights, np.float32))


def prune_merged(stack, density, weights, lam=1.0):
    """Prune the merged delta: the weighted sum times lam, then its top-density magnitudes."""
    return prune_magnitude(weighted_sum(stack, np.float32(lam) * np.asarray(weights, np.float32)), density)
