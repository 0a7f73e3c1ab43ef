"""Adapters for probing a server: random LoRA factors of a model's shapes, one distinct adapter
per seed, in PEFT layout. Large enough to move the next-token distribution visibly, so that which
adapter (which generation) produced an answer can be told from its logprobs alone; used by the
serving tests and `bench/bench_serve.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ruv_kernels.modules import ALL_MODULES, module_shape
from ruv_resources.base_model import read_base_model
from ruv_resources.peft_format import peft_key


def module_dims(model_dir: str | os.PathLike) -> tuple[int, dict[str, tuple[int, int]]]:
    info = read_base_model(model_dir)
    q, kv = info.num_attention_heads * info.head_dim, info.num_key_value_heads * info.head_dim
    return info.num_layers, {m: module_shape(m, info.hidden_size, info.intermediate_size, q, kv) for m in ALL_MODULES}


def write_probe_adapter(out: str | os.PathLike, model_dir: str | os.PathLike, seed: int, *, rank: int = 8,
                        modules=("q_proj", "v_proj"), scale: float = 0.05, num_layers: int | None = None,
                        dims: dict | None = None) -> Path:
    """A rank-`rank` LoRA on `modules` of every layer, factors N(0, 1/sqrt(in)) and N(0, scale)."""
    layers, model_dims = module_dims(model_dir) if dims is None else (num_layers, dims)
    layers = num_layers or layers
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in modules:
            fan_in, fan_out = model_dims[module]
            key = f"layers.{layer}.{module}"
            tensors[peft_key(key, "A")] = (rng.standard_normal((rank, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
            tensors[peft_key(key, "B")] = (rng.standard_normal((fan_out, rank)) * scale).astype(np.float32)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": float(rank), "lora_dropout": 0.0,
              "target_modules": list(modules), "bias": "none", "use_dora": False, "use_rslora": False,
              "fan_in_fan_out": False, "modules_to_save": None, "base_model_name_or_path": None, "inference_mode": True,
              "init_lora_weights": True, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
