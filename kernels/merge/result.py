"""What a merge gives back, or raises when the request is wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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


def finish(prep, factors: dict, norms: dict, resids: dict, rank: int, method: str, params: dict) -> MergeResult:
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
