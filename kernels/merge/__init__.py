"""Merging LoRA adapters on their deltas: eight methods behind one registry.

A source adapter is `{module key: (A [r, in], B [out, r], scale)}` with delta `scale * B @ A`;
sources may differ in rank, scale and key set (a missing key is a zero delta). `merge` returns
a `MergeResult` whose modules hold `(A_out, B_out)` with the scale folded in (delta = B_out @
A_out) at one common rank. One method per file, as in mergekit's `merge_methods/`:

    average, weighted, task_arithmetic, slerp   linear: exact at the summed rank (concatenation),
                                                compressed by QR + small SVD when asked
    ties, dare, magnitude_prune                 dense per module: sparsify each task, combine
                                                with or without sign consensus (`generalized`)
    prune_merged                                dense: the weighted sum, then pruned
                                                (all dense ones then truncated; the error is reported)

The rest, one job each: `registry` (names, parameters, dispatch), `params` (every parameter
check), `sources` (source validation), `result`, `assemble` (the linear and dense drivers),
`lowrank` (factor algebra, truncation), `steps` (the reference: small pure numpy steps, as PEFT's
merge_utils), `select` (radix selection), `sparsify` (magnitude trim, DARE), `fused` (the
streaming kernels, tested equal to `steps`).

`METHOD_PARAMS[name]` lists what a method accepts and `REQUIRED_PARAMS[name]` what it needs;
`check_parameters` validates a request without running it.
"""

from __future__ import annotations

from ruv_kernels.merge.params import COMBINES as DARE_COMBINES
from ruv_kernels.merge.params import PARAM_DEFAULTS
from ruv_kernels.merge.registry import METHOD_PARAMS, METHODS, REQUIRED_PARAMS, check_parameters, merge
from ruv_kernels.merge.result import MergeError, MergeResult

__all__ = ["merge", "check_parameters", "MergeError", "MergeResult", "METHODS", "METHOD_PARAMS", "REQUIRED_PARAMS",
           "PARAM_DEFAULTS", "DARE_COMBINES"]
