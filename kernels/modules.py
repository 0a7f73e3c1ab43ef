"""Names and shapes of the linear modules of a Llama-style block that a LoRA adapter can target.

Shapes follow the real model (vLLM's names): q `hidden -> q_size` (heads * head_dim), k/v
`hidden -> kv_size` (kv_heads * head_dim, smaller than q_size under grouped-query attention),
o `q_size -> hidden`, gate/up `hidden -> intermediate`, down `intermediate -> hidden`. Without head
counts q_size = hidden and kv_size = q_size. Everything that sizes an adapter goes through
`module_shape`.
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


def module_shape(
    module: str, hidden_size: int, intermediate_size: int | None, q_size: int | None = None, kv_size: int | None = None
) -> tuple[int, int]:
    """Return `(in_features, out_features)` of `module` at the given geometry."""
    q = q_size or hidden_size
    kv = kv_size or q
    shapes = {
        "q_proj": (hidden_size, q),
        "k_proj": (hidden_size, kv),
        "v_proj": (hidden_size, kv),
        "o_proj": (q, hidden_size),
        "gate_proj": (hidden_size, intermediate_size),
        "up_proj": (hidden_size, intermediate_size),
        "down_proj": (intermediate_size, hidden_size),
    }
    if module not in shapes:
        raise ValueError(f"unknown module {module!r}; expected one of {', '.join(ALL_MODULES)}")
    n_in, n_out = shapes[module]
    if n_in is None or n_out is None:
        raise ValueError(f"{module}: the intermediate size is unknown (no MLP module was seen)")
    return n_in, n_out


def input_size(kind: str, hidden_size: int, intermediate_size: int | None, q_size: int | None = None) -> int:
    """Width of an activation named in `INPUT_KIND`: the block input, attention output or MLP activation."""
    sizes = {"hidden": hidden_size, "attn_out": q_size or hidden_size, "mlp_act": intermediate_size}
    if kind not in sizes:
        raise ValueError(f"unknown input kind {kind!r}; expected one of {', '.join(sizes)}")
    return sizes[kind]


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
