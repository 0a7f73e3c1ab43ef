"""Names and shapes of the linear modules of a Llama-style block that a LoRA adapter can target.

Shapes follow the real model: q/k/v/o are hidden->hidden, gate/up hidden->intermediate,
down intermediate->hidden. Everything that sizes an adapter goes through `module_shape`.
"""

from __future__ import annotations

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_MODULES = ATTENTION_MODULES + MLP_MODULES

# Which activation feeds each module: the block input (after norm), the attention output
# (input of o_proj) or the MLP activation (input of down_proj).
INPUT_KIND = {
    "q_proj": "hidden",
    "k_proj": "hidden",
    "v_proj": "hidden",
    "o_proj": "attn_out",
    "gate_proj": "hidden",
    "up_proj": "hidden",
    "down_proj": "mlp_act",
}


def module_shape(module: str, hidden_size: int, intermediate_size: int) -> tuple[int, int]:
    """Return `(in_features, out_features)` of `module` at the given geometry."""
    if module in ATTENTION_MODULES:
        return hidden_size, hidden_size
    if module in ("gate_proj", "up_proj"):
        return hidden_size, intermediate_size
    if module == "down_proj":
        return intermediate_size, hidden_size
    raise ValueError(f"unknown module {module!r}; expected one of {', '.join(ALL_MODULES)}")


def module_block(module: str) -> str:
    """The sub-block a module lives under in PEFT/HF key names: `self_attn` or `mlp`."""
    if module in ATTENTION_MODULES:
        return "self_attn"
    if module in MLP_MODULES:
        return "mlp"
    raise ValueError(f"unknown module {module!r}; expected one of {', '.join(ALL_MODULES)}")


def lora_scale(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return float(alpha) / (rank ** 0.5 if use_rslora else rank)
