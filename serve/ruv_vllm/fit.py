"""Does an adapter fit the served model? Checked from the files alone, before vLLM sees them.

vLLM's own load (`add_lora`) is the final word; this check comes first so that a refusal says in
one line which tensor is wrong and why (vLLM's errors name internals), and so that an adapter
for another base model never reaches the engine: the served model's shapes come from its
`config.json`, the adapter's from its `adapter_config.json` and the safetensors header (read
without loading a tensor).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY_RE = re.compile(r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_MAX_HEADER = 100 * 1024 * 1024


class DoesNotFit(ValueError):
    """The adapter cannot be served by this model; the message says why, in one line."""


@dataclass(frozen=True)
class ServedShapes:
    """In and out width of every LoRA-able module of the served model, and its layer count."""

    num_layers: int
    dims: dict  # module -> (in_features, out_features)
    max_rank: int

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, max_rank: int) -> "ServedShapes":
        config = json.loads((Path(model_dir) / "config.json").read_text())
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        q, kv = heads * head_dim, kv_heads * head_dim
        dims = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
                "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
        return cls(int(config["num_hidden_layers"]), dims, int(max_rank))

    def describe(self) -> str:
        return (f"hidden {self.dims['q_proj'][0]}, intermediate {self.dims['gate_proj'][1]}, "
                f"q {self.dims['q_proj'][1]}, k/v {self.dims['k_proj'][1]}, {self.num_layers} layers")


def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, checked against the file's size (a partial copy fails)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise DoesNotFit(f"{path.name}: truncated (no header)")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise DoesNotFit(f"{path.name}: header length {length} is not plausible (corrupt file)")
            header = json.loads(handle.read(length))
            size = path.stat().st_size
    except FileNotFoundError:
        raise DoesNotFit(f"{path.name} is missing") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DoesNotFit(f"{path.name}: unreadable header ({exc})") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise DoesNotFit(f"{path.name}: {size} bytes, the header needs {8 + length + end} (partial file)")
    return header


def check_fits(adapter_dir: str | Path, served: ServedShapes) -> dict:
    """Raise DoesNotFit unless every tensor of the adapter has the served model's shape; return
    a summary (rank, modules, layers) for the logs."""
    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise DoesNotFit(f"{CONFIG} is missing") from None
    except (OSError, ValueError) as exc:
        raise DoesNotFit(f"{CONFIG}: unreadable or not JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise DoesNotFit(f"{CONFIG}: not a LoRA adapter (peft_type {config.get('peft_type') if isinstance(config, dict) else None!r})")
    if config.get("use_dora"):
        raise DoesNotFit("DoRA adapters are not served (vLLM refuses them)")
    if config.get("bias", "none") not in ("none", None):
        raise DoesNotFit(f"bias {config.get('bias')!r}: adapters with biases are not served")
    if config.get("modules_to_save"):
        raise DoesNotFit(f"modules_to_save {config['modules_to_save']!r}: not served (only LoRA factors are)")
    rank = int(config.get("r") or 0)
    if not 1 <= rank <= served.max_rank:
        raise DoesNotFit(f"rank {rank} is above the server's --max-lora-rank {served.max_rank}" if rank > 0 else f"rank {rank} is not a rank")
    header = safetensors_header(adapter_dir / WEIGHTS)
    layers, modules = set(), set()
    for key, info in header.items():
        if key == "__metadata__":
            continue
        match = _KEY_RE.match(key)
        if match is None:
            raise DoesNotFit(f"tensor {key!r} is not a LoRA factor of a decoder layer's linear module")
        layer, module, factor = int(match.group(1)), match.group(2), match.group(3)
        if module not in served.dims:
            raise DoesNotFit(f"tensor {key!r}: module {module!r} is not one of {', '.join(MODULES)}")
        if layer >= served.num_layers:
            raise DoesNotFit(f"tensor {key!r}: layer {layer}, the served model has {served.num_layers} layers ({served.describe()})")
        fan_in, fan_out = served.dims[module]
        want = [rank, fan_in] if factor == "A" else [fan_out, rank]
        if list(info.get("shape", [])) != want:
            raise DoesNotFit(f"tensor {key!r} has shape {info.get('shape')}, the served model needs {want} "
                             f"(the adapter is for another base model; served: {served.describe()})")
        layers.add(layer)
        modules.add(module)
    if not modules:
        raise DoesNotFit(f"{WEIGHTS} holds no LoRA factors")
    return {"rank": rank, "modules": sorted(modules), "layers": len(layers)}
