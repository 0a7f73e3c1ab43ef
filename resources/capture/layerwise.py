"""Running a Llama-family decoder one sub-block at a time, so capture can look at (and sequential
fitting can change) each layer before the next one runs.

A decoder layer is `h += attn(ln1(h)); h += mlp(ln2(h))`. `attention` and `mlp` run one half through
the model's own modules and return what the target modules read: the normed input (q/k/v, gate/up),
o_proj's input and down_proj's input (taken with forward pre-hooks). Sequences have equal length,
so attention needs no mask (SDPA applies the causal one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
MLP_INPUTS = ("gate_proj", "up_proj")


def as_rows(t) -> np.ndarray:
    """A torch activation [B, L, d] as float32 rows [B*L, d] (a view where possible)."""
    return np.ascontiguousarray(t.detach().reshape(-1, t.shape[-1]).numpy(), dtype=np.float32)


@dataclass
class Half:
    """One half-layer run: `x` the normed input, `inner` the input of o_proj / down_proj, `out` what
    is added to the residual stream."""

    x: object
    inner: object
    out: object


class LayerRunner:
    """Embeds token ids and runs decoder layers half by half (torch tensors, no gradients)."""

    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model
        self.decoder = model.model

    def embed(self, ids):
        return self.decoder.embed_tokens(self.torch.as_tensor(ids))

    def rope(self, h):
        positions = self.torch.arange(h.shape[1]).unsqueeze(0)
        return self.decoder.rotary_emb(h, positions)

    def attention(self, layer: int, h, rope) -> Half:
        block = self.decoder.layers[layer]
        x = block.input_layernorm(h)
        seen = {}
        handle = block.self_attn.o_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))
        try:
            out = block.self_attn(hidden_states=x, position_embeddings=rope, attention_mask=None)[0]
        finally:
            handle.remove()
        return Half(x, seen["a"], out)

    def mlp(self, layer: int, h) -> Half:
        block = self.decoder.layers[layer]
        x = block.post_attention_layernorm(h)
        seen = {}
        handle = block.mlp.down_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("m", args[0]))
        try:
            out = block.mlp(x)
        finally:
            handle.remove()
        return Half(x, seen["m"], out)

    def layer(self, layer: int, h, rope):
        """The residual stream after the whole layer (and both halves, for who needs them)."""
        attn = self.attention(layer, h, rope)
        mid = h + attn.out
        mlp = self.mlp(layer, mid)
        return mid + mlp.out, attn, mlp, mid
