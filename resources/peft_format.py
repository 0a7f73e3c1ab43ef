"""Read and write adapters in PEFT's on-disk layout, so PEFT and vLLM load what we write and we
load what PEFT writes.

A directory holds `adapter_model.safetensors` (keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, A `[r, in]`, B `[out, r]`,
header metadata `{"format": "pt", ...}`) and `adapter_config.json` (`peft_type` LORA, `r`,
`lora_alpha`, `target_modules`, `lora_dropout`, `use_rslora`, `task_type` CAUSAL_LM).

Loading is strict where PEFT is lenient: every expected tensor must be present, of the right
shape and dtype, and finite; otherwise `AdapterFormatError` names the tensor.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ruv_resources.safetensors_io import save_file_deterministic

from ruv_kernels.adapter import AdapterSpec, LoraAdapter, split_key
from ruv_kernels.modules import ALL_MODULES, module_block
from ruv_resources.errors import AdapterFormatError

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_KEY_RE = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.("
    + "|".join(ALL_MODULES)
    + r")\.lora_([AB])(?:\.default)?\.weight$"
)
_DTYPES = {"float32": np.float32, "float16": np.float16}


def peft_key(key: str, factor: str) -> str:
    """`layers.0.q_proj`, `A` -> `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`."""
    layer, module = split_key(key)
    return f"base_model.model.model.layers.{layer}.{module_block(module)}.{module}.lora_{factor}.weight"


@dataclass
class LoadedAdapter:
    """An adapter read from disk, with the free-form metadata that was saved beside it."""

    adapter: LoraAdapter
    metadata: dict = field(default_factory=dict)
    dtype: str = "float32"


def save_adapter(
    adapter: LoraAdapter,
    directory: str | os.PathLike,
    *,
    metadata: dict | None = None,
    dtype: str = "float32",
    base_model: str | None = None,
) -> list[Path]:
    """Write `adapter` into an existing directory in PEFT layout; returns the files written.

    `metadata` (JSON-serialisable) is stored in the safetensors header under `ruv.metadata`;
    the geometry under `ruv.geometry` so a reload needs no outside knowledge.
    """
    if dtype not in _DTYPES:
        raise AdapterFormatError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    spec = adapter.spec
    tensors = {}
    for key in spec.keys():
        for factor, store in (("A", adapter.A), ("B", adapter.B)):
            if key not in store:
                raise AdapterFormatError(f"adapter has no lora_{factor} for {key}")
            array = store[key]
            if not np.all(np.isfinite(array)):
                raise AdapterFormatError(f"lora_{factor} of {key} has non-finite values; refusing to save")
            tensors[peft_key(key, factor)] = np.ascontiguousarray(array, dtype=_DTYPES[dtype])
    header = {
        "format": "pt",
        "ruv.geometry": json.dumps(spec.geometry(), sort_keys=True),
        "ruv.metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    config = directory / CONFIG_NAME
    save_file_deterministic(tensors, weights, metadata=header)
    config.write_text(json.dumps(peft_config(spec, base_model), indent=2, sort_keys=True) + "\n")
    return [weights, config]


def peft_config(spec: AdapterSpec, base_model: str | None = None) -> dict:
    """The `adapter_config.json` PEFT writes for a LoRA on a causal LM."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": [m for m in ALL_MODULES if m in spec.targets],
        "use_rslora": spec.use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }


GEOMETRY_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "q_size", "kv_size")


def load_adapter(
    directory: str | os.PathLike,
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_layers: int | None = None,
    q_size: int | None = None,
    kv_size: int | None = None,
) -> LoadedAdapter:
    """Read and check an adapter directory written by us or by PEFT.

    Module shapes come from the tensors themselves (each module's A/B pair must agree with the
    other modules on hidden, q/kv and intermediate widths), so an adapter PEFT saved for any
    Llama-family model loads, grouped-query attention included. Geometry given as arguments (or
    recorded in our header) is enforced on top: a tensor that does not fit it is named.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterFormatError(f"{directory}: not a directory")
    config = _read_config(directory / CONFIG_NAME)
    tensors, header = _read_tensors(directory / WEIGHTS_NAME)

    found: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        match = _KEY_RE.match(name)
        if match is None:
            raise AdapterFormatError(f"{directory / WEIGHTS_NAME}: unexpected tensor {name!r} (not a LoRA A/B of a Llama-style layer)")
        layer, block, module, factor = match.groups()
        if module_block(module) != block:
            raise AdapterFormatError(f"{name}: {module} belongs under {module_block(module)}, not {block}")
        if array.ndim != 2:
            raise AdapterFormatError(f"{name}: shape {list(array.shape)}, expected a 2-D matrix")
        found.setdefault(f"layers.{int(layer)}.{module}", {})[factor] = array

    try:
        recorded = json.loads(header.get("ruv.geometry", "{}") or "{}")
    except ValueError:
        raise AdapterFormatError(f"{directory / WEIGHTS_NAME}: header ruv.geometry is not valid JSON") from None
    targets = tuple(m for m in ALL_MODULES if m in config["target_modules"])
    present = {split_key(k)[1] for k in found}
    if not targets:
        # PEFT also accepts a regex or "all-linear"; then the tensors say what is targeted.
        targets = tuple(m for m in ALL_MODULES if m in present)
    if not targets:
        raise AdapterFormatError(f"{directory}: adapter targets no module this project knows ({', '.join(ALL_MODULES)})")
    extra = present - set(targets)
    if extra:
        raise AdapterFormatError(f"{directory}: tensors for {', '.join(sorted(extra))} but target_modules is {list(targets)}")
    if not found:
        raise AdapterFormatError(f"{directory / WEIGHTS_NAME}: holds no LoRA tensors")

    explicit = {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_layers": num_layers,
                "q_size": q_size, "kv_size": kv_size}
    given = {f: explicit[f] or recorded.get(f) for f in GEOMETRY_FIELDS}
    # what was not given is read off the tensors; what was given is enforced tensor by tensor below
    inferred = infer_geometry(found, directory / WEIGHTS_NAME, skip={f for f, v in given.items() if v})
    inferred["num_layers"] = 1 + max(split_key(k)[0] for k in found)
    dims = {f: given[f] or inferred.get(f) for f in GEOMETRY_FIELDS}
    try:
        spec = AdapterSpec(
            rank=config["r"],
            alpha=config["lora_alpha"],
            targets=targets,
            hidden_size=int(dims["hidden_size"]),
            intermediate_size=dims["intermediate_size"],
            num_layers=int(dims["num_layers"]),
            dropout=config["lora_dropout"],
            use_rslora=config["use_rslora"],
            q_size=dims["q_size"],
            kv_size=dims["kv_size"],
        )
    except (ValueError, TypeError) as exc:
        raise AdapterFormatError(f"{directory / CONFIG_NAME}: {exc}") from None

    A, B, dtypes = {}, {}, set()
    for key in spec.keys():
        n_in, n_out = spec.shape_of(key)
        for factor, shape, out in (("A", (spec.rank, n_in), A), ("B", (n_out, spec.rank), B)):
            name = peft_key(key, factor)
            array = found.get(key, {}).get(factor)
            if array is None:
                raise AdapterFormatError(f"{directory / WEIGHTS_NAME}: missing tensor {name}")
            if array.shape != shape:
                raise AdapterFormatError(f"{name}: shape {list(array.shape)}, expected {list(shape)}")
            if array.dtype.name not in _DTYPES:
                raise AdapterFormatError(f"{name}: dtype {array.dtype.name}, expected float32 or float16")
            if not np.all(np.isfinite(array)):
                raise AdapterFormatError(f"{name}: has non-finite values (NaN or inf)")
            dtypes.add(array.dtype.name)
            out[key] = array
    unexpected = set(found) - set(spec.keys())
    if unexpected:
        raise AdapterFormatError(f"{directory / WEIGHTS_NAME}: tensors for {sorted(unexpected)[0]} outside the {spec.num_layers}-layer geometry")
    if len(dtypes) > 1:
        raise AdapterFormatError(f"{directory / WEIGHTS_NAME}: mixes dtypes {sorted(dtypes)}")
    metadata = json.loads(header.get("ruv.metadata", "{}") or "{}")
    return LoadedAdapter(LoraAdapter(spec, A, B), metadata, dtypes.pop())


def full_geometry(geometry: dict) -> dict:
    """A recorded geometry with the attention widths filled in (q = hidden, kv = q by default)."""
    out = dict(geometry)
    if "hidden_size" in out:
        out.setdefault("q_size", out["hidden_size"])
        out.setdefault("kv_size", out["q_size"])
    return out


# Which model dimension each side of each module's weight is: (A's input width, B's output width).
_SIDES = {
    "q_proj": ("hidden_size", "q_size"),
    "k_proj": ("hidden_size", "kv_size"),
    "v_proj": ("hidden_size", "kv_size"),
    "o_proj": ("q_size", "hidden_size"),
    "gate_proj": ("hidden_size", "intermediate_size"),
    "up_proj": ("hidden_size", "intermediate_size"),
    "down_proj": ("intermediate_size", "hidden_size"),
}


def infer_geometry(found: dict[str, dict[str, np.ndarray]], where, skip: set[str] = frozenset()) -> dict:
    """Model dimensions read off the tensors; two tensors that disagree on one are an error."""
    geometry: dict[str, int] = {}
    seen_at: dict[str, str] = {}
    for key in sorted(found, key=lambda k: split_key(k)):
        module = split_key(key)[1]
        for factor, axis, field in (("A", 1, _SIDES[module][0]), ("B", 0, _SIDES[module][1])):
            array = found[key].get(factor)
            if array is None or field in skip:
                continue
            size = int(array.shape[axis])
            if field in geometry and geometry[field] != size:
                raise AdapterFormatError(
                    f"{where}: {peft_key(key, factor)} gives {field} {size}, but {seen_at[field]} gives {geometry[field]}")
            geometry.setdefault(field, size)
            seen_at.setdefault(field, peft_key(key, factor))
    return geometry


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise AdapterFormatError(f"{path}: missing (an adapter directory needs {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path}: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{path}: peft_type is {config.get('peft_type')!r}, only LORA is supported")
    for name in ("r", "lora_alpha"):
        if not isinstance(config.get(name), (int, float)) or isinstance(config.get(name), bool):
            raise AdapterFormatError(f"{path}: {name} must be a number, got {config.get(name)!r}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterFormatError(f"{path}: rank_pattern/alpha_pattern (per-module ranks) are not supported")
    if config.get("use_dora"):
        raise AdapterFormatError(f"{path}: DoRA adapters are not supported")
    targets = config.get("target_modules") or []
    config["target_modules"] = [targets] if isinstance(targets, str) else list(targets)
    config["r"] = int(config["r"])
    config["lora_alpha"] = float(config["lora_alpha"])
    config["lora_dropout"] = float(config.get("lora_dropout") or 0.0)
    config["use_rslora"] = bool(config.get("use_rslora", False))
    return config


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    if not path.is_file():
        raise AdapterFormatError(f"{path}: missing (an adapter directory needs {WEIGHTS_NAME})")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        return load_file(str(path)), header
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise AdapterFormatError(f"{path}: corrupt or partial safetensors file ({exc})") from None
