"""Datasets on disk: one `dataset.safetensors` per dataset, and the loader of user data.

A dataset holds, for each target module `layers.{i}.{module}`, its inputs `X [n, in]` and residual
targets `R [n, out]`, plus per-example `quality [n]` and the train/validation split. Modules that
read the same activation share one input tensor (`input_of` in the header says which).

Tensor names in the file:
  inputs.<name>                 X, float32 or float16
  targets.layers.<i>.<module>   R, float32 or float16
  quality, train_idx, val_idx   [n] float32, [n_train] int64, [n_val] int64
  noise_std, truth.<key>.U/.V   synthetic datasets only: per-example noise and the true delta U @ V
Header metadata `ruv.dataset` (JSON): kind, task, seed, noise_floor, geometry, input_of, ...

User data (`load_user_folder`) is a folder of `layers.<i>.<module>.safetensors` files, each with
`X` `[n, in]` and `R` `[n, out]` (float32 or float16) and optionally `quality` `[n]` in [0, 1]
(default 1). Every file must have the same `n`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from ruv_resources.safetensors_io import save_file_deterministic

from ruv_kernels.adapter import split_key
from ruv_kernels.modules import module_shape

DATASET_NAME = "dataset.safetensors"
_USER_FILE = re.compile(r"^layers\.(\d+)\.([a-z_]+)\.safetensors$")


class DatasetError(ValueError):
    """A dataset or user-data folder is unreadable, inconsistent, or holds bad values."""


@dataclass
class Dataset:
    """Arrays of a task dataset; `inputs[input_of[key]]` is the X of module `key`."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    input_of: dict[str, str]
    quality: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    meta: dict = field(default_factory=dict)
    noise_std: np.ndarray | None = None
    truth: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.quality.shape[0])

    def X(self, key: str) -> np.ndarray:
        return self.inputs[self.input_of[key]]


def save_dataset(dataset: Dataset, directory: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write `dataset` into an existing directory; big arrays in `dtype`, indices and quality exact."""
    if dtype not in ("float32", "float16"):
        raise DatasetError(f"dtype must be float32 or float16, got {dtype!r}")
    store = np.float16 if dtype == "float16" else np.float32
    tensors: dict[str, np.ndarray] = {
        "quality": np.ascontiguousarray(dataset.quality, np.float32),
        "train_idx": np.ascontiguousarray(dataset.train_idx, np.int64),
        "val_idx": np.ascontiguousarray(dataset.val_idx, np.int64),
    }
    for name, X in dataset.inputs.items():
        tensors[f"inputs.{name}"] = np.ascontiguousarray(X, store)
    for key, R in dataset.targets.items():
        tensors[f"targets.{key}"] = np.ascontiguousarray(R, store)
    if dataset.noise_std is not None:
        tensors["noise_std"] = np.ascontiguousarray(dataset.noise_std, np.float32)
    for key, (U, V) in dataset.truth.items():
        tensors[f"truth.{key}.U"] = np.ascontiguousarray(U, np.float32)
        tensors[f"truth.{key}.V"] = np.ascontiguousarray(V, np.float32)
    header = {"format": "ruv-dataset", "ruv.dataset": json.dumps({**dataset.meta, "input_of": dataset.input_of, "dtype": dtype}, sort_keys=True)}
    path = Path(directory) / DATASET_NAME
    save_file_deterministic(tensors, path, metadata=header)
    return path


def load_dataset(directory: str | os.PathLike) -> Dataset:
    """Read a dataset written by `save_dataset`, checking it is complete and consistent."""
    path = Path(directory) / DATASET_NAME
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: corrupt or partial safetensors file ({exc})") from None
    try:
        meta = json.loads(header["ruv.dataset"])
        input_of = meta.pop("input_of")
        quality, train_idx, val_idx = tensors.pop("quality"), tensors.pop("train_idx"), tensors.pop("val_idx")
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not a ruv dataset (missing {exc})") from None
    noise_std = tensors.pop("noise_std", None)
    inputs, targets, truth = {}, {}, {}
    for name, array in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "inputs":
            inputs[rest] = array
        elif kind == "targets":
            targets[rest] = array
        elif kind == "truth":
            key, factor = rest.rsplit(".", 1)
            truth.setdefault(key, [None, None])[0 if factor == "U" else 1] = array
    dataset = Dataset(inputs, targets, input_of, quality, train_idx, val_idx, meta, noise_std, {k: tuple(v) for k, v in truth.items()})
    for key in targets:
        if input_of.get(key) not in inputs:
            raise DatasetError(f"{path}: targets.{key} has no inputs tensor")
    return dataset


def check_dataset(dataset: Dataset, hidden_size: int, intermediate_size: int, num_layers: int,
                  q_size: int | None = None, kv_size: int | None = None) -> None:
    """Shapes against the geometry, finite values, non-empty, consistent split: or DatasetError."""
    n = dataset.n_examples
    if n == 0 or not dataset.targets:
        raise DatasetError("dataset is empty")
    if dataset.quality.shape != (n,) or not np.all(np.isfinite(dataset.quality)):
        raise DatasetError("quality must be a finite [n] vector")
    for key, R in dataset.targets.items():
        try:
            layer, module = split_key(key)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        if layer >= num_layers:
            raise DatasetError(f"{key}: layer {layer} is outside the {num_layers}-layer geometry")
        n_in, n_out = module_shape(module, hidden_size, intermediate_size, q_size, kv_size)
        X = dataset.X(key)
        if X.shape != (n, n_in):
            raise DatasetError(f"{key}: X has shape {list(X.shape)}, expected [{n}, {n_in}]")
        if R.shape != (n, n_out):
            raise DatasetError(f"{key}: R has shape {list(R.shape)}, expected [{n}, {n_out}]")
        for name, array in (("X", X), ("R", R)):
            if not np.all(np.isfinite(array)):
                bad = int(np.argwhere(~np.isfinite(array))[0][0])
                raise DatasetError(f"{key}: {name} has a non-finite value (NaN or inf) in example {bad}")
    idx = np.concatenate([dataset.train_idx, dataset.val_idx])
    if len(dataset.train_idx) == 0 or len(dataset.val_idx) == 0:
        raise DatasetError(f"split leaves {len(dataset.train_idx)} train and {len(dataset.val_idx)} validation examples; both must be non-empty")
    if idx.min() < 0 or idx.max() >= n or len(np.unique(idx)) != len(idx):
        raise DatasetError("train/validation indices are out of range or overlap")


def split_indices(n: int, seed: int, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """80/20 (by default) train/validation split after a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_user_folder(folder: str | os.PathLike, *, hidden_size: int, intermediate_size: int, num_layers: int,
                     q_size: int | None = None, kv_size: int | None = None, seed: int = 0) -> Dataset:
    """Turn a folder of per-module `X`/`R` safetensors files into a checked `Dataset`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    if not files:
        raise DatasetError(f"{folder}: no .safetensors files (expected layers.<i>.<module>.safetensors)")
    inputs, targets, input_of, quality = {}, {}, {}, None
    for file in files:
        match = _USER_FILE.match(file.name)
        if not match:
            raise DatasetError(f"{file}: name must be layers.<i>.<module>.safetensors")
        key = file.name.removesuffix(".safetensors")
        try:
            split_key(key)
            tensors = load_file(str(file))
        except ValueError as exc:
            raise DatasetError(f"{file}: {exc}") from None
        except (SafetensorError, OSError) as exc:
            raise DatasetError(f"{file}: corrupt or partial safetensors file ({exc})") from None
        for name in ("X", "R"):
            if name not in tensors:
                raise DatasetError(f"{file}: missing tensor {name}")
            if tensors[name].ndim != 2:
                raise DatasetError(f"{file}: {name} must be 2-D, got shape {list(tensors[name].shape)}")
            if tensors[name].dtype.name not in ("float32", "float16"):
                raise DatasetError(f"{file}: {name} has dtype {tensors[name].dtype.name}, expected float32 or float16")
        inputs[key], targets[key], input_of[key] = tensors["X"], tensors["R"], key
        q = tensors.get("quality")
        if q is not None:
            if quality is not None and not np.array_equal(q, quality):
                raise DatasetError(f"{file}: quality differs from the other files")
            quality = q.astype(np.float32)
    n = {k: v.shape[0] for k, v in inputs.items()}
    if len(set(n.values())) != 1:
        raise DatasetError(f"{folder}: files disagree on the number of examples: {n}")
    count = next(iter(n.values()))
    quality = np.ones(count, np.float32) if quality is None else quality
    if quality.shape != (count,) or np.any((quality < 0) | (quality > 1)) or not np.all(np.isfinite(quality)):
        raise DatasetError(f"{folder}: quality must be [n] values in [0, 1]")
    train_idx, val_idx = split_indices(count, seed)
    dataset = Dataset(inputs, targets, input_of, quality, train_idx, val_idx,
                      {"kind": "user", "source": str(folder), "seed": seed, "noise_floor": None})
    check_dataset(dataset, hidden_size, intermediate_size, num_layers, q_size, kv_size)
    return dataset
