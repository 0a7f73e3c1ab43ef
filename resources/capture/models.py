"""Loading the base model, its tokenizer and a teacher with transformers, offline and safely.

Weights come only from safetensors or GGUF (`use_safetensors=True`, never pickled `.bin`), never
with `trust_remote_code`, and never from a hub (`HF_HUB_OFFLINE=1`, `local_files_only`). A
teacher must be of the base model's architecture, shapes and vocabulary.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ruv_resources.base_model import BaseModelError, BaseModelInfo, read_base_model
from ruv_resources.errors import AdapterFormatError
from ruv_resources.peft_format import load_adapter


@dataclass
class LoadedModel:
    """A causal LM in float32 on the CPU, evaluation mode, with its tokenizer and shapes."""

    model: object
    tokenizer: object
    info: BaseModelInfo

    @property
    def bos_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise BaseModelError(f"{self.info.path}: the tokenizer has no BOS token")
        return int(bos)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` alone: no BOS or other special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def linear(self, layer: int, module: str):
        """The `nn.Linear` of `module` in decoder layer `layer`."""
        block = self.model.model.layers[layer]
        return getattr(block.self_attn if module in ("q_proj", "k_proj", "v_proj", "o_proj") else block.mlp, module)


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load the base model at `path` (a model directory or a `.gguf` file) and its tokenizer."""
    info = read_base_model(path)  # architecture, shapes and the safetensors-only rule, before torch
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = dict(dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=False, local_files_only=True)
    p = Path(path)
    if info.kind == "gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, **kwargs)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(p), use_safetensors=True, **kwargs)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(model, tokenizer, info)


def geometry_dims(info: BaseModelInfo) -> dict[str, int]:
    """The module widths of a model, as the adapter loader takes them."""
    return {"hidden_size": info.hidden_size, "intermediate_size": info.intermediate_size, "num_layers": info.num_layers,
            "q_size": info.num_attention_heads * info.head_dim, "kv_size": info.num_key_value_heads * info.head_dim}


def teacher_from_adapter(base: LoadedModel, adapter_dir: str | os.PathLike) -> LoadedModel:
    """The base model with a PEFT LoRA adapter's deltas added to its weights (an exact teacher)."""
    try:
        adapter = load_adapter(adapter_dir, **geometry_dims(base.info)).adapter
    except AdapterFormatError as exc:
        raise BaseModelError(f"teacher_adapter {adapter_dir}: does not fit the base model: {exc}") from None
    import torch

    teacher = copy.deepcopy(base.model)
    teacher_model = LoadedModel(teacher, base.tokenizer, base.info)
    with torch.no_grad():
        for key in adapter.keys():
            layer, module = int(key.split(".")[1]), key.split(".")[2]
            delta = adapter.delta(key).astype(np.float32)
            teacher_model.linear(layer, module).weight += torch.from_numpy(delta)
    return teacher_model


def teacher_from_model(base: LoadedModel, model_path: str | os.PathLike) -> LoadedModel:
    """A fine-tuned model of the base's architecture, shapes and vocabulary."""
    info = read_base_model(model_path)
    mine, theirs = base.info, info
    fields = ("architecture", "hidden_size", "intermediate_size", "num_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size")
    differs = [f"{f} {getattr(theirs, f)} (base {getattr(mine, f)})" for f in fields
               if getattr(theirs, f) is not None and getattr(mine, f) is not None and getattr(theirs, f) != getattr(mine, f)]
    if differs:
        raise BaseModelError(f"teacher_model {model_path}: not the base model's architecture or vocabulary: {', '.join(differs)}")
    teacher = load_model(model_path)
    if len(teacher.tokenizer) != len(base.tokenizer):
        raise BaseModelError(f"teacher_model {model_path}: vocabulary of {len(teacher.tokenizer)} tokens, base has {len(base.tokenizer)}")
    return teacher
