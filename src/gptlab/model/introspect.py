"""Look inside the network: attention maps per layer and head.

The model computes attention in a fused kernel that never materialises the weights, so each
attention module is asked for them: a forward hook catches the input it got (the normalised
residual stream and the rotary angles) and the module recomputes its own q and k from it, so the
maps stay right whatever the variant (QK-norm, RoPE).
"""

from __future__ import annotations

import torch

from gptlab.model.encdec import EncoderDecoder
from gptlab.model.gpt import GPT
from gptlab.model.layers import Attention


@torch.no_grad()
def attention_maps(model: GPT, ids: list[int]) -> torch.Tensor:
    """Attention weights (n_layer, n_head, T, T) for the last block_size ids.

    Row t holds how much position t attends to each position <= t (each row sums to 1; the
    upper triangle, the future, is 0).
    """
    ids = ids[-model.config.block_size :]
    maps: list[torch.Tensor] = []

    def capture(module, args, _output):
        maps.append(module.weights(*args[:2])[0])

    hooks = [attn.register_forward_hook(capture) for attn in model.attention_layers()]
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], dtype=torch.long, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(maps).cpu()


@torch.no_grad()
def encdec_attention_maps(
    model: EncoderDecoder, source: list[int], target: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """An encoder–decoder's decoder attention for one source and target (the decoder's input ids):
    self-attention (n_layer, n_head, T, T), causal, and cross-attention (n_layer, n_head, T, S), row t
    holding how much target position t attends to each source position (each row sums to 1)."""
    maps: dict[str, list[torch.Tensor]] = {"self": [], "cross": []}

    def capture(kind: str):
        def hook(module, args, kwargs, _output):
            rope = args[1] if len(args) > 1 else kwargs.get("rope")
            maps[kind].append(module.weights(args[0], rope, memory=kwargs.get("memory"), mask=kwargs.get("mask"))[0])

        return hook

    attention = [m for m in model.decoder.modules() if isinstance(m, Attention)]  # each block's self, then cross
    hooks = [a.register_forward_hook(capture("cross" if a.cross else "self"), with_kwargs=True) for a in attention]
    try:
        device = next(model.parameters()).device
        as_ids = lambda ids: torch.tensor([ids], dtype=torch.long, device=device)  # noqa: E731
        model(as_ids(target), source=as_ids(source))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(maps["self"]).cpu(), torch.stack(maps["cross"]).cpu()
