"""`slerp`: spherical interpolation between exactly two adapters, per module.

Each module's two deltas are treated as flat vectors D1, D2; with omega the angle between them
the result is sin((1-t) omega)/sin(omega) * D1 + sin(t omega)/sin(omega) * D2 (as mergekit does
it: the angle comes from the normalised vectors, the coefficients apply to the raw ones). When
the deltas are nearly parallel or antiparallel (|cos| > 0.9995), or one is zero, it falls back
to (1-t) D1 + t D2. The angle is computed from Gram matrices of the factors, and the result is
a combination with two scalars per module, so it is exact at rank r1 + r2 by concatenation.
"""

from __future__ import annotations

import math

from ruv_kernels.merge.assemble import linear_merge
from ruv_kernels.merge.lowrank import lowrank_inner
from ruv_kernels.merge.params import check_rank, check_t
from ruv_kernels.merge.result import MergeResult
from ruv_kernels.merge.sources import Prepared, prepare

NAME = "slerp"
PARAMS = ("t", "rank")
REQUIRED = ("t",)
DOT_THRESHOLD = 0.9995


def slerp_coefficients(t: float, dot: float, n1: float, n2: float) -> tuple[float, float, bool]:
    """(c1, c2, linear?) such that slerp(D1, D2; t) = c1 D1 + c2 D2, given <D1, D2>, |D1|, |D2|."""
    if n1 == 0.0 or n2 == 0.0:
        return 1.0 - t, t, True
    cos = max(-1.0, min(1.0, dot / (n1 * n2)))
    if abs(cos) > DOT_THRESHOLD:
        return 1.0 - t, t, True
    omega = math.acos(cos)
    so = math.sin(omega)
    return math.sin((1.0 - t) * omega) / so, math.sin(t * omega) / so, False


def _module_geometry(prep: Prepared, key: str):
    """<D1, D2>, |D1|, |D2| of one module from the factors (a missing side is zero)."""
    parts = []
    for i in (0, 1):
        if key in prep.sources[i]:
            a, b, s = prep.sources[i][key]
            parts.append((a, b, s))
        else:
            parts.append(None)
    if parts[0] is None or parts[1] is None:
        return 0.0, 0.0, 0.0
    (a1, b1, s1), (a2, b2, s2) = parts
    n1 = abs(s1) * math.sqrt(max(lowrank_inner(a1, b1, a1, b1), 0.0))
    n2 = abs(s2) * math.sqrt(max(lowrank_inner(a2, b2, a2, b2), 0.0))
    dot = s1 * s2 * lowrank_inner(a1, b1, a2, b2)
    return dot, n1, n2


def merge(sources, *, t, rank=None) -> MergeResult:
    """Per-module SLERP of two adapters' deltas at position t (0 gives the first, 1 the second)."""
    prep = prepare(sources, n_required=2, method=NAME)
    t = check_t(t)
    rank = check_rank(rank)
    coeffs = {}
    linear = []
    for key in prep.keys:
        dot, n1, n2 = _module_geometry(prep, key)
        c1, c2, lin = slerp_coefficients(t, dot, n1, n2)
        coeffs[key] = [c1, c2]
        if lin:
            linear.append(key)
    return linear_merge(prep, coeffs, rank, NAME, {"t": t, "linear_fallback_modules": linear})
