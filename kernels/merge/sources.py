"""The sources of a merge, checked once: float32 C-contiguous factors, the union of module keys
in first-seen order, one (out, in) shape per key."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ruv_kernels.finite import is_finite
from ruv_kernels.merge.result import MergeError


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
            if not (is_finite(a) and is_finite(b)):
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
