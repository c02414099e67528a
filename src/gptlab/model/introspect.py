"""Look inside the network: attention maps per layer and head.

The model computes attention in a fused kernel that never materialises the weights, so we
capture each block's q and k (the output of its `attn.qkv` Linear, via forward hooks) during an
ordinary forward pass and recompute softmax(q k^T / sqrt(head_dim)) with the causal mask.
"""

from __future__ import annotations

import math

import torch

from gptlab.model.gpt import GPT


@torch.no_grad()
def attention_maps(model: GPT, ids: list[int]) -> torch.Tensor:
    """Attention weights (n_layer, n_head, T, T) for the last block_size ids.

    Row t holds how much position t attends to each position <= t (each row sums to 1; the
    upper triangle, the future, is 0).
    """
    cfg = model.config
    ids = ids[-cfg.block_size:]
    captured: list[torch.Tensor] = []
    hooks = [block.attn.qkv.register_forward_hook(lambda _m, _inp, out: captured.append(out.detach()))
             for block in model.blocks]
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], dtype=torch.long, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    T, C, H = len(ids), cfg.n_embd, cfg.n_head
    future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), diagonal=1)
    maps = []
    for qkv in captured:
        q, k, _ = qkv[0].float().split(C, dim=-1)
        # (T, C) -> (H, T, head_dim): the same split into heads as the model's attention.
        q, k = (t.view(T, H, C // H).transpose(0, 1) for t in (q, k))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
        maps.append(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1))
    return torch.stack(maps).cpu()
