"""v_proj fitted through the student's attention, for sequential capture.

A change D to v_proj changes head h's attention output at position i by `D_g z_i^h`, where
`z_i^h = sum_j p_ij^h x_j` mixes the layer's normed inputs with head h's attention weights and
g = h // (heads / kv_heads) is its key/value group. So with the attention weights held fixed
the fit is linear, with inputs z (one Gram per group: `kernels.exact.grouped`). The target is
what the attention output should add to close the student's gap to the teacher's residual
stream after attention, mapped back through o_proj (a Tikhonov inverse, `mu` times the mean
diagonal of W_o^T W_o, so directions o_proj barely passes are not chased). Through the sink
(the BOS position most heads attend to) this gives every position a shift the way the system
prompt's extra keys and values do, which a per-position fit of v_proj's output cannot: on
SmolLM2 it doubled the KL removed by a q/v adapter (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.exact import accumulate_cross, accumulate_gram
from ruv_resources.capture.layerwise import as_rows


def attention_probs(block, x, rope):
    """`(P [N, heads, L, L], heads per kv group, head_dim)`: the causal attention weights of a
    Llama attention block on its normed input x [N, L, hidden], with the block's current q/k."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = block.self_attn
    hd = attn.head_dim
    N, L, _ = x.shape
    q = attn.q_proj(x).view(N, L, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(N, L, -1, hd).transpose(1, 2)
    cos, sin = rope
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    rep = q.shape[1] // k.shape[1]
    scores = (q @ k.repeat_interleave(rep, dim=1).transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(scores, -1), rep, hd


def output_target(gap, W_o, mu: float):
    """The o_proj input change t [.., q_size] minimising ||t W_o^T - gap||^2 + mu' ||t||^2."""
    import torch

    W = W_o.double()
    WtW = W.T @ W
    reg = mu * torch.diagonal(WtW).mean() * torch.eye(WtW.shape[0], dtype=WtW.dtype)
    return (gap.double() @ W @ torch.linalg.inv(WtW + reg)).float()


def grouped_statistics(P, x, target, text: slice, rep: int, head_dim: int, sink_weight: float):
    """Per key/value group: `G_g = sum_h Z_h^T Z_h` and `C_g = sum_h Z_h^T T_h` over the text
    rows (Z_h = P_h x, T_h the target's columns of head h). With `sink_weight` > 0, the first
    position is added with a zero target and that weight (its own output is mostly left alone,
    while a change of its value can still shift the positions that attend to it)."""
    groups = P.shape[1] // rep
    d = x.shape[-1]
    grams, crosses = [], []
    for g in range(groups):
        G, C = np.zeros((d, d)), np.zeros((d, head_dim))
        for h in range(g * rep, (g + 1) * rep):
            Z = P[:, h] @ x
            Zt = as_rows(Z[:, text])
            ones = np.ones(Zt.shape[0], np.float32)
            accumulate_gram(G, Zt, ones)
            accumulate_cross(C, Zt, as_rows(target[:, :, h * head_dim:(h + 1) * head_dim]), ones)
            if sink_weight > 0:
                Z0 = as_rows(Z[:, :1])
                accumulate_gram(G, Z0, np.full(Z0.shape[0], sink_weight, np.float32))
        grams.append(G)
        crosses.append(C)
    return grams, crosses
