"""Merging LoRA adapters on their deltas: seven methods behind one registry.

A source adapter is `{module key: (A [r, in], B [out, r], scale)}` with delta `scale * B @ A`;
sources may differ in rank, scale and key set (a missing key is a zero delta). `merge` returns
a `MergeResult` whose modules hold `(A_out, B_out)` with the scale folded in (delta = B_out @
A_out) at one common rank. One method per file, as in mergekit's `merge_methods/`:

    average, weighted, task_arithmetic, slerp   linear: exact at the summed rank (concatenation),
                                                compressed by QR + small SVD when asked
    ties, dare, magnitude_prune                 dense per module (Numba kernels in `dense`),
                                                then truncated SVD; the error is reported

`METHOD_PARAMS[name]` lists what a method accepts and `REQUIRED_PARAMS[name]` what it needs, so
a CLI can validate before calling.
"""

from __future__ import annotations

from kernels.merge import average, dare, magnitude_prune, slerp, task_arithmetic, ties, weighted
from kernels.merge.core import MergeError, MergeResult

_METHOD_MODULES = (average, weighted, task_arithmetic, slerp, ties, dare, magnitude_prune)

METHODS = {m.NAME: m.merge for m in _METHOD_MODULES}
METHOD_PARAMS: dict[str, tuple[str, ...]] = {m.NAME: tuple(m.PARAMS) for m in _METHOD_MODULES}
REQUIRED_PARAMS: dict[str, tuple[str, ...]] = {m.NAME: tuple(m.REQUIRED) for m in _METHOD_MODULES}
DARE_COMBINES = dare.COMBINES

# merge()'s keyword defaults: a value different from these counts as "given".
PARAM_DEFAULTS = {"weights": None, "density": None, "lam": 1.0, "t": None, "rank": None,
                  "seed": 0, "dare_combine": "linear"}

__all__ = ["merge", "MergeError", "MergeResult", "METHODS", "METHOD_PARAMS", "REQUIRED_PARAMS",
           "PARAM_DEFAULTS", "DARE_COMBINES"]


def _given(name, value) -> bool:
    default = PARAM_DEFAULTS[name]
    if default is None:
        return value is not None
    try:
        return bool(value != default)
    except Exception:  # e.g. an array compared to a float
        return True


def merge(method: str, sources: list[dict], *, weights=None, density=None, lam=1.0, t=None,
          rank=None, seed=0, dare_combine="linear") -> MergeResult:
    """Merge `sources` with `method` (one of METHODS); see each method's module for details.

    Raises MergeError for an unknown method, a parameter the method does not take or lacks,
    an out-of-range value, or sources that do not fit together.
    """
    if method not in METHODS:
        raise MergeError(f"method: unknown merge method {method!r}; expected one of {', '.join(METHODS)}")
    values = {"weights": weights, "density": density, "lam": lam, "t": t, "rank": rank,
              "seed": seed, "dare_combine": dare_combine}
    takes = METHOD_PARAMS[method]
    extra = [p for p, v in values.items() if p not in takes and _given(p, v)]
    if extra:
        raise MergeError(
            f"{extra[0]}: method {method!r} does not take {', '.join(extra)} "
            f"(it takes: {', '.join(takes) or 'nothing'})"
        )
    missing = [p for p in REQUIRED_PARAMS[method] if values[p] is None]
    if missing:
        raise MergeError(f"{missing[0]}: method {method!r} requires {', '.join(missing)}")
    return METHODS[method](sources, **{p: values[p] for p in takes})
