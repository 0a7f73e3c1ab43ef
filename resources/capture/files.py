"""A captured dataset on disk: the token windows, and per layer the sufficient statistics.

  windows.safetensors          student [N, 1+T], teacher [N, P+T] int64 ids, train / heldout indices;
                               header `ruv.dataset` (JSON): kind "captured", mode, teacher, hashes, ...
  stats.layers.<i>.safetensors teacher-forced mode only: `gram.<split>.<kind>` [in, in],
                               `cross.<split>.<layers.i.module>` [in, out], `rr.<split>.<key>` [1],
                               `n.<split>` [1], float32 (accumulated in float64)

The statistics are fixed by the model's shapes, not by the number of tokens (see `stats_bytes`);
a layer is written as soon as it is captured and read back one at a time. Plain numpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from ruv_resources.capture.windows import Windows
from ruv_resources.dataset_format import DatasetError
from ruv_resources.safetensors_io import save_file_deterministic

WINDOWS_NAME = "windows.safetensors"


def stats_name(layer: int) -> str:
    return f"stats.layers.{layer}.safetensors"


def save_windows(directory: str | os.PathLike, windows: Windows, meta: dict) -> Path:
    tensors = {"student": windows.student, "teacher": windows.teacher, "train": windows.train.astype(np.int64),
               "heldout": windows.heldout.astype(np.int64), "offset": np.asarray([windows.offset], np.int64)}
    path = Path(directory) / WINDOWS_NAME
    save_file_deterministic({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
                            metadata={"format": "ruv-dataset", "ruv.dataset": json.dumps(meta, sort_keys=True)})
    return path


def read_meta(directory: str | os.PathLike) -> dict | None:
    """The dataset header of a captured dataset, or None when `directory` holds another kind."""
    path = Path(directory) / WINDOWS_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return json.loads((handle.metadata() or {})["ruv.dataset"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: corrupt or partial captured dataset ({exc})") from None


def load_windows(directory: str | os.PathLike) -> Windows:
    path = Path(directory) / WINDOWS_NAME
    try:
        t = load_file(str(path))
        return Windows(t["student"], t["teacher"], int(t["offset"][0]), t["train"], t["heldout"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: corrupt or partial captured dataset ({exc})") from None


def save_layer_stats(directory: str | os.PathLike, stats) -> Path:
    tensors = {}
    for split in stats.gram:
        tensors[f"n.{split}"] = np.asarray([stats.n[split]], np.int64)
        for kind, G in stats.gram[split].items():
            tensors[f"gram.{split}.{kind}"] = np.ascontiguousarray(G, np.float32)
        for key, C in stats.cross[split].items():
            tensors[f"cross.{split}.{key}"] = np.ascontiguousarray(C, np.float32)
            tensors[f"rr.{split}.{key}"] = np.asarray([stats.rr[split][key]], np.float64)
    path = Path(directory) / stats_name(stats.layer)
    save_file_deterministic(tensors, path, metadata={"format": "ruv-stats"})
    return path


def load_layer_stats(directory: str | os.PathLike, layer: int):
    from ruv_resources.capture.fit import LayerStats

    path = Path(directory) / stats_name(layer)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: missing, corrupt or partial layer statistics ({exc})") from None
    stats = LayerStats(layer)
    for name, array in tensors.items():
        kind, split, rest = (name.split(".", 2) + [""])[:3]
        if kind == "n":
            stats.n[split] = int(array[0])
        elif kind == "gram":
            stats.gram.setdefault(split, {})[rest] = array.astype(np.float64)
        elif kind == "cross":
            stats.cross.setdefault(split, {})[rest] = array.astype(np.float64)
        elif kind == "rr":
            stats.rr.setdefault(split, {})[rest] = float(array[0])
    return stats


def stats_bytes(widths: dict[str, int], outs: dict[str, int], kinds: set[str], modules: tuple[str, ...], layers: int,
                splits: int = 2) -> int:
    """Size of the statistics at float32: fixed by the shapes, whatever the number of tokens."""
    per_layer = sum(widths[k] ** 2 for k in kinds) + sum(widths[_kind(m)] * outs[m] for m in modules)
    return 4 * splits * layers * per_layer


def _kind(module: str) -> str:
    from ruv_kernels.modules import INPUT_KIND

    return INPUT_KIND[module]
