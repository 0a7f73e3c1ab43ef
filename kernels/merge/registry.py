"""The merge methods by name (one module per method, each with NAME, PARAMS, REQUIRED and
`merge`), and `merge()`, which checks the parameters against the method and dispatches.

A new method is a module beside the others that composes `sources.prepare`, the `params`
checks and one of the `assemble` drivers, added to `_METHOD_MODULES` here.
"""

from __future__ import annotations

from ruv_kernels.merge import average, dare, magnitude_prune, prune_merged, slerp, task_arithmetic, ties, weighted
from ruv_kernels.merge.params import check_method_params
from ruv_kernels.merge.result import MergeError, MergeResult

_METHOD_MODULES = (average, weighted, task_arithmetic, slerp, ties, dare, magnitude_prune, prune_merged)

METHODS = {m.NAME: m.merge for m in _METHOD_MODULES}
METHOD_PARAMS: dict[str, tuple[str, ...]] = {m.NAME: tuple(m.PARAMS) for m in _METHOD_MODULES}
REQUIRED_PARAMS: dict[str, tuple[str, ...]] = {m.NAME: tuple(m.REQUIRED) for m in _METHOD_MODULES}


def check_parameters(method: str, **values) -> None:
    """MergeError for an unknown method, or a parameter it does not take or lacks (names as in
    `merge`; absent ones count as merge()'s defaults). The catalogue and the CLI validate with it."""
    if method not in METHODS:
        raise MergeError(f"method: unknown merge method {method!r}; expected one of {', '.join(METHODS)}")
    check_method_params(method, METHOD_PARAMS[method], REQUIRED_PARAMS[method], values)


def merge(method: str, sources: list[dict], *, weights=None, density=None, lam=1.0, t=None,
          rank=None, seed=0, dare_combine="linear") -> MergeResult:
    """Merge `sources` with `method` (one of METHODS); see each method's module for details.

    Raises MergeError for an unknown method, a parameter the method does not take or lacks,
    an out-of-range value, or sources that do not fit together.
    """
    values = {"weights": weights, "density": density, "lam": lam, "t": t, "rank": rank,
              "seed": seed, "dare_combine": dare_combine}
    check_parameters(method, **values)
    return METHODS[method](sources, **{p: values[p] for p in METHOD_PARAMS[method]})
