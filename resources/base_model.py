"""What a base model on disk is, read without running it: its geometry and a content hash.

A base model is a local Hugging Face model directory (`config.json` plus `*.safetensors`) or a
single `.gguf` file. Only Llama-family architectures (the block layout `kernels.modules` names)
are accepted. Nothing here imports torch or transformers: the catalogue, `ruv presets` and the
asset graph read a model's shapes from its `config.json` or from the GGUF header alone.

Trust: weights are only ever safetensors or GGUF; a directory that holds only pickled `.bin`
weights is refused, and so is a config that needs `trust_remote_code`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ruv_resources.errors import StoreError

# model_type (config.json) / general.architecture (GGUF) -> the class transformers builds
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}


class BaseModelError(StoreError):
    """The base model is missing, unreadable, or not an architecture this project supports."""


@dataclass(frozen=True)
class BaseModelInfo:
    """Shapes of a base model, in Hugging Face `config.json` names, and where it lives."""

    path: str
    kind: str  # "hf_dir" or "gguf"
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int | None

    def geometry_fields(self) -> dict[str, int]:
        return {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size, "num_layers": self.num_layers,
                "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim}


def read_base_model(path: str | os.PathLike) -> BaseModelInfo:
    """Geometry of the model at `path` (a model directory or a `.gguf` file), or BaseModelError."""
    path = Path(path)
    if path.is_dir():
        return _from_hf_dir(path)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path)
    if not path.exists():
        raise BaseModelError(f"{path}: no such model (expected a model directory with config.json, or a .gguf file)")
    raise BaseModelError(f"{path}: not a model directory or a .gguf file")


def content_hash(path: str | os.PathLike) -> str:
    """sha256 over a file's bytes, or over a directory's regular files (names and bytes, sorted,
    hidden ones left out): the data version a model, teacher or corpus source asset reports."""
    digest = hashlib.sha256()
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    for file in files:
        digest.update((file.name if root.is_dir() else "").encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _from_hf_dir(path: Path) -> BaseModelInfo:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise BaseModelError(f"{path}: no config.json (a model directory needs config.json and *.safetensors)")
    if not list(path.glob("*.safetensors")):
        pickled = list(path.glob("*.bin")) + list(path.glob("*.pt"))
        why = " (only pickled .bin weights, which are never loaded: convert them to safetensors)" if pickled else ""
        raise BaseModelError(f"{path}: no *.safetensors weights{why}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise BaseModelError(f"{config_path}: expected a JSON object")
    config = config.get("text_config", config) if "hidden_size" not in config else config
    arch = config.get("model_type")
    if arch not in ARCHITECTURES:
        raise BaseModelError(f"{config_path}: model_type {arch!r} is not a supported architecture ({', '.join(ARCHITECTURES)})")
    if config.get("auto_map"):
        raise BaseModelError(f"{config_path}: needs remote code (auto_map); models are never loaded with trust_remote_code")
    heads = _int(config, "num_attention_heads", config_path)
    hidden = _int(config, "hidden_size", config_path)
    return BaseModelInfo(
        path=str(path), kind="hf_dir", architecture=arch, hidden_size=hidden,
        intermediate_size=_int(config, "intermediate_size", config_path),
        num_layers=_int(config, "num_hidden_layers", config_path),
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        vocab_size=config.get("vocab_size"),
    )


def _int(config: dict, key: str, where) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BaseModelError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


# GGUF value types (ggml's gguf.h): scalar struct formats, 8 = string, 9 = array
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _from_gguf(path: Path) -> BaseModelInfo:
    meta = read_gguf_metadata(path, stop_after={"tokenizer.ggml.tokens"})
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise BaseModelError(f"{path}: general.architecture {arch!r} is not a supported architecture ({', '.join(ARCHITECTURES)})")

    def get(key: str, required: bool = True):
        value = meta.get(f"{arch}.{key}")
        if required and (not isinstance(value, int) or value < 1):
            raise BaseModelError(f"{path}: GGUF metadata {arch}.{key} is missing or not a positive integer")
        return value

    hidden, heads = get("embedding_length"), get("attention.head_count")
    return BaseModelInfo(
        path=str(path), kind="gguf", architecture=arch, hidden_size=hidden,
        intermediate_size=get("feed_forward_length"), num_layers=get("block_count"), num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv", False) or heads,
        head_dim=get("attention.key_length", False) or hidden // heads,
        vocab_size=get("vocab_size", False) or meta.get("tokenizer.ggml.tokens.count"),
    )


def read_gguf_metadata(path: str | os.PathLike, stop_after: set[str] = frozenset()) -> dict:
    """The key/value header of a GGUF file (versions 2 and 3). Arrays are skipped and recorded as
    `<key>.count`; reading stops at a key in `stop_after` (the long tokenizer tables)."""
    meta: dict = {}
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise BaseModelError(f"{path}: not a GGUF file (bad magic)")
            version, = struct.unpack("<I", handle.read(4))
            if version not in (2, 3):
                raise BaseModelError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            _n_tensors, n_kv = struct.unpack("<QQ", handle.read(16))
            for _ in range(n_kv):
                key = _gguf_string(handle)
                vtype, = struct.unpack("<I", handle.read(4))
                if vtype == 9:
                    etype, count = struct.unpack("<IQ", handle.read(12))
                    meta[f"{key}.count"] = count
                    if key in stop_after:
                        break
                    for _ in range(count):
                        _gguf_value(handle, etype)
                else:
                    meta[key] = _gguf_value(handle, vtype)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise BaseModelError(f"{path}: corrupt or truncated GGUF header ({exc})") from None
    return meta


def _gguf_string(handle) -> str:
    length, = struct.unpack("<Q", handle.read(8))
    if length > 1 << 24:
        raise struct.error(f"string of {length} bytes")
    return handle.read(length).decode("utf-8")


def _gguf_value(handle, vtype: int):
    if vtype == 8:
        return _gguf_string(handle)
    fmt = _GGUF_SCALARS.get(vtype)
    if fmt is None:
        raise struct.error(f"unknown value type {vtype}")
    size = struct.calcsize(fmt)
    raw = handle.read(size)
    if len(raw) != size:
        raise struct.error("truncated")
    return struct.unpack(fmt, raw)[0]
