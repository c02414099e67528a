"""The GPT network: a decoder-only Transformer that reads top to bottom.

    ids (B,T) -> token embedding (smear: + a gated share of the previous token's)
              (+ learned position embedding) -> dropout                                 (ends.py)
              -> n_layer x Block[ x + attn(norm_1(x)), x + mlp(norm_2(x)) ]   (layers.py; RoPE inside attn)
                 (resid_mix: each block first reads λ_resid·x + λ_x0·x0; value_embeds: alternate layers add
                 a gated embedding of the token to attention's values)
              -> final norm -> unembedding (tied to the token embedding, or its own head)
              -> (logit soft-cap) -> logits (B,T,V)                                     (ends.py)

Positions are given per row (inference feeds rows of different lengths); training uses 0..T-1.
Inference passes a KV cache (layers.AttentionCache, laid out by cache_layout(); implementations in
inference/kv_cache.py): each layer's keys and values are kept, so a new token only computes its own and
attends to the stored ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from gptlab.config import ModelConfig
from gptlab.model.ends import LanguageModel
from gptlab.model.layers import (
    AttentionCache,
    Block,
    CacheLayout,
    CausalSelfAttention,
    Linear,
    Smear,
    as_blocks,
    cache_layout,
)
from gptlab.model.loss import lm_loss

# What each parameter is for; an optimizer gives each role its own update rule and learning rate.
Role = Literal["embedding", "head", "matrix", "vector"]


def init_weights(model: LanguageModel, residual_branches: Callable[[str], int]) -> None:
    """GPT-2's initialisation of a model made of these layers (GPT and encoder–decoder alike): normal
    weights (std 0.02), zero biases, and the residual projections scaled down by the number of branches
    that add into the residual stream (residual_branches(name) per block x n_layer), or zero."""
    cfg = model.config
    model.apply(_init_module)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            if cfg.zero_init:
                # Each block starts as the identity on the residual stream; it grows in as it learns.
                nn.init.zeros_(p)
            else:
                # Scaled down so the residual stream's variance does not grow with depth (GPT-2's
                # 1/sqrt(2 * n_layer) for its two branches per block).
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(residual_branches(name) * cfg.n_layer))
    for name, p in model.named_parameters():
        if name.endswith("value_gate.weight"):
            nn.init.zeros_(p)  # every gate starts at 2·sigmoid(0) = 1: the value embedding added whole
        elif name == "smear.gate.weight":
            nn.init.zeros_(p)  # sigmoid(0) = 1/2 everywhere; smear_lambda (0) decides how much is taken
    if cfg.zero_init and not cfg.tie_embeddings:
        nn.init.zeros_(model.lm_head.weight)  # every token equally likely at the start: loss ln(V)


def _init_module(module: nn.Module) -> None:
    """GPT-2's initialisation of one module's own weights: normal (std 0.02), biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def roles_by_name(model: nn.Module) -> dict[str, tuple[Role, int]]:
    """Each parameter's role (the optimizer's grouping) and how many matrices lie stacked in it (a
    module's split_matrices, e.g. q, k and v), by name. Every lookup table (nn.Embedding: tokens,
    positions, value embeddings) is an embedding."""
    splits = {
        f"{prefix}.{name}" if prefix else name: n
        for prefix, module in model.named_modules()
        for name, n in getattr(module, "split_matrices", {}).items()
    }
    embeddings = {f"{prefix}.weight" for prefix, m in model.named_modules() if isinstance(m, nn.Embedding)}
    roles: dict[str, tuple[Role, int]] = {}
    for name, p in model.named_parameters():  # a tied head is the token embedding, listed once
        if name in embeddings:
            roles[name] = ("embedding", 1)
        elif name in ("lm_head.weight", "reward_head.weight"):
            roles[name] = ("head", 1)
        elif p.dim() >= 2:
            roles[name] = ("matrix", splits.get(name, 1))
        else:
            roles[name] = ("vector", 1)
    return roles


class GPT(LanguageModel):
    """Decoder-only Transformer language model."""

    wpe: nn.Embedding | None

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self._add_embedder("wpe")  # wte, wpe (learned positions) or rotary, drop
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self._add_output_head()  # ln_f, lm_head
        self.smear = Smear(cfg) if cfg.smear else None
        if cfg.reward_head:
            # A reward model: one number per sequence, read from the final norm at its last token
            # (built last, so the other modules draw the same initial weights as the language model's).
            self.reward_head = Linear(cfg.n_embd, 1)
        init_weights(self, lambda name: 2)  # a GPT block adds two branches: attention and MLP

    @property
    def cache_can_slide(self) -> bool:
        """Whether a KV cache may drop its oldest entries and go on past block_size without
        recomputing: yes with RoPE (a stored key keeps its rotation; only distances matter), no with
        learned positions (sliding moves every kept token to another position embedding)."""
        return self.wpe is None

    def parameter_roles(self) -> dict[str, tuple[Role, int]]:
        """Each parameter's role and, for matrices, how many matrices lie stacked in it (its rows
        split into that many equal blocks, e.g. q, k and v), by parameter name."""
        return roles_by_name(self)

    def attention_layers(self) -> list[CausalSelfAttention]:
        """Every attention module, first layer first."""
        return [block.attn for block in as_blocks(self.blocks)]

    def cache_layout(self, capacity: int | None = None) -> CacheLayout:
        """The shape of a KV cache for this model (capacity: block_size unless given)."""
        device = self.wte.weight.device
        return cache_layout(self.attention_layers(), self.config.block_size, self.cache_can_slide, device, capacity)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        cache: AttentionCache | None = None,
        lengths: torch.Tensor | None = None,
        reward_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for ids (B, T); with targets, also the mean next-token cross-entropy
        (targets equal to model.loss.IGNORE count for nothing). A reward model (reward_head) given
        reward_at, (B,) positions, returns instead each row's reward (B,) read at that position (its
        last real token), in float32; through forward, so DDP sees the pass.

        positions: (T,) or (B, T) position ids, 0..T-1 by default. With a cache, idx continues the
        sequences stored in it (their positions come from the cache) and only each row's last
        logits come back, (B, 1, V): the token at lengths[b]-1 for rows right-padded to T.
        """
        if cache is not None:
            return self._forward_cached(idx, cache, lengths), None
        B, T = idx.shape
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} exceeds block_size={self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
        x, rope = self.embed(idx, positions)
        x0 = x
        for block in self.blocks:
            x = block(x, rope, x0=x0, ids=idx)
        if reward_at is not None:
            last = x[torch.arange(B, device=idx.device), reward_at]
            return self.reward_head(self.ln_f(last)).squeeze(-1).float(), None
        logits = self.head(x)
        return logits, (lm_loss(logits, targets) if targets is not None else None)

    def _forward_cached(self, idx: torch.Tensor, cache: AttentionCache, lengths: torch.Tensor | None) -> torch.Tensor:
        B, T = idx.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=idx.device)
        previous = cache.previous_ids(idx) if self.smear is not None else None
        x, rope = self.embed(idx, cache.positions(T), previous=previous)
        x0 = x
        for block in self.blocks:
            x = block(x, rope, cache, x0=x0, ids=idx)
        cache.advance(lengths)
        last = x[torch.arange(B, device=idx.device), lengths - 1]  # each row's newest real token
        return self.head(last[:, None, :])
