"""Parameter and FLOP accounting for a model config, computed from its shape (no model built).

FLOPs per token count multiply-adds as 2 FLOPs. Training costs 3x the forward pass (forward, then
backward for activations and for weights): 6 FLOPs per matmul weight, plus attention's
q.k and attention.v products, 2 * 2 * n_layer * T * n_embd forward (counted over the full T x T
square, as is usual, although the causal half is masked).
"""

from __future__ import annotations

from dataclasses import dataclass

from gptlab.config import ModelConfig


@dataclass
class ParamCount:
    """Parameters by place in the network."""

    token_embedding: int  # V x D, shared with the unembedding (tied)
    position_embedding: int  # T x D
    blocks: int  # all Transformer blocks
    final_norm: int

    @property
    def embeddings(self) -> int:
        """Token and position embeddings together."""
        return self.token_embedding + self.position_embedding

    @property
    def total(self) -> int:
        """Every distinct parameter (the tied unembedding counted once)."""
        return self.embeddings + self.blocks + self.final_norm


def count_params(cfg: ModelConfig) -> ParamCount:
    """Count parameters the way gpt.GPT builds them."""
    D, L, b = cfg.n_embd, cfg.n_layer, int(cfg.bias)
    norm = D * (1 + b)  # weight (+ bias)
    attn = D * 3 * D + 3 * D * b + D * D + D * b
    mlp = D * 4 * D + 4 * D * b + 4 * D * D + D * b
    return ParamCount(
        token_embedding=cfg.vocab_size * D,
        position_embedding=cfg.block_size * D,
        blocks=L * (2 * norm + attn + mlp),
        final_norm=norm,
    )


def matmul_weights(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix product per token: block Linears and the unembedding."""
    D, L = cfg.n_embd, cfg.n_layer
    return L * 12 * D * D + cfg.vocab_size * D


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """Forward and training FLOPs per token at context length seq_len (default block_size)."""
    T = seq_len or cfg.block_size
    forward_matmul = 2 * matmul_weights(cfg)
    forward_attention = 2 * 2 * cfg.n_layer * T * cfg.n_embd
    forward = forward_matmul + forward_attention
    return {"forward": forward, "forward_attention": forward_attention, "train": 3 * forward}


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def describe(cfg: ModelConfig) -> list[str]:
    """The lines printed at the start of training and by `gptlab info`."""
    p, f = count_params(cfg), flops_per_token(cfg)
    return [
        f"model: {cfg.n_layer} layers, {cfg.n_head} heads, n_embd={cfg.n_embd}, block_size={cfg.block_size}, "
        f"vocab_size={cfg.vocab_size}",
        f"parameters: {p.total:,} ({human(p.total)})",
        f"  embeddings: {p.embeddings:,} (token {cfg.vocab_size} x {cfg.n_embd} = {p.token_embedding:,}, "
        f"position {cfg.block_size} x {cfg.n_embd} = {p.position_embedding:,}; unembedding tied to token)",
        f"  blocks:     {p.blocks:,} ({cfg.n_layer} x {p.blocks // max(1, cfg.n_layer):,})",
        f"  final norm: {p.final_norm:,}",
        f"FLOPs per token: forward {human(f['forward'])} (attention {human(f['forward_attention'])}), "
        f"training {human(f['train'])} (forward + backward)",
    ]
