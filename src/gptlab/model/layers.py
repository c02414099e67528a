"""The layers every architecture here is built from, each variant chosen by a config value.

    norm:      LayerNorm (GPT-2) | RMSNorm (scale only, no mean subtraction)
    position:  learned absolute embedding (in gpt.py) | rotary (RoPE): q and k rotated by position
    attention: multi-head self-attention (causal, or bidirectional for an encoder) or cross-attention
               (keys and values from another sequence); optional QK-norm; its own weights on request
    mlp:       GELU 4x | ReLU² 4x | SwiGLU (~8/3x wide, so its three matrices hold as many weights)
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import ModelConfig


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The normalisation layer the config asks for, over the last dim (n_embd unless given)."""
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding: each pair of a head's channels is rotated by an angle that grows
    with the position, so q·k depends only on the distance between positions, not where they are.

    The angles are computed for the positions asked (per row), so a KV cache may keep going past
    block_size: keys keep the rotation they were stored with.
    """

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles, (T, head_dim/2) or (B, 1, T, head_dim/2) for per-row positions."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        if angles.dim() == 3:  # (B, T, d/2): broadcast over heads
            angles = angles[:, None]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the angles: the two halves of the channels form the rotated pairs."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class AttentionCache(Protocol):
    """What attention needs of a KV cache (inference/kv_cache.py): store a layer's new keys and values,
    get back every key and value a query may attend to, with the mask that says which."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


class Attention(nn.Module):
    """Multi-head attention. Self-attention: causal (position t sees positions <= t) or, with
    causal=False, bidirectional over the whole sequence (an encoder reading its source). Cross-attention
    (cross=True): queries from x, keys and values from another sequence, the encoder's output."""

    def __init__(self, cfg: ModelConfig, layer: int = 0, causal: bool = True, cross: bool = False):
        super().__init__()
        self.layer = layer  # its index into a KV cache
        self.causal, self.cross = causal and not cross, cross
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.head_dim = cfg.n_embd // cfg.n_head
        if cross:
            # Queries and keys/values read different sequences, so they are separate matmuls.
            self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
            self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)
            self.split_matrices = {"kv.weight": 2}
        else:
            self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
            # q, k and v are three matrices side by side: an optimizer that treats matrices whole (Muon)
            # takes them apart.
            self.split_matrices = {"qkv.weight": 3}
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if cfg.qk_norm else None
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, n_head, T, head_dim): each head attends in its own subspace.
        B, T, _ = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention's keys and values (B, H, S, D) of an encoder output (B, S, C): computed
        once per source, however many target tokens then attend to them."""
        k, v = (self._heads(t) for t in self.kv(memory).split(self.n_embd, dim=2))
        return (self.k_norm(k) if self.k_norm is not None else k), v

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
             memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cross:
            q = self._heads(self.q(x))
            k, v = memory if isinstance(memory, tuple) else self.keys_values(memory)
            # No rotation: a target position and a source position are not on one axis.
            return (self.q_norm(q) if self.q_norm is not None else q), k, v
        q, k, v = (self._heads(t) for t in self.qkv(x).split(self.n_embd, dim=2))
        if self.q_norm is not None:
            # QK-norm bounds the attention logits, so a high learning rate cannot blow up the softmax.
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: AttentionCache | None = None,
                memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). memory: cross-attention's source (B, S, C), or its keys_values();
        mask: which keys each query may see (True: may), broadcast to (B, H, T, keys), e.g. a source's
        padding; a causal layer masks the future itself."""
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope, memory)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None or self.cross:
            # Fused kernel (flash attention where available); is_causal masks the future.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, dropout_p=dropout_p)
        else:
            k, v, mask = cache.update(self.layer, k, v)
            # mask None: a prefill from position 0 (plain causal) or one token that may see every key.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))

    @torch.no_grad()
    def weights(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights (B, n_head, T, keys) this layer applies to input x: softmax of the
        scaled q·k with the future (causal) and mask's False keys masked, computed from the same q and
        k as forward (QK-norm, RoPE and all)."""
        q, k, _ = self._qkv(x, rope, memory)
        T, S = q.size(2), k.size(2)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.causal:
            future = torch.triu(torch.ones(T, S, dtype=torch.bool, device=x.device), diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1)


# The GPT's attention, under the name its callers know.
CausalSelfAttention = Attention


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU's hidden width: 8/3 x n_embd (three matrices then hold as many weights as a 4x MLP's
    two), rounded up to a multiple of 8."""
    return -(-8 * n_embd // 3 // 8) * 8


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, a non-linearity, project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = swiglu_hidden(cfg.n_embd) if cfg.mlp == "swiglu" else 4 * cfg.n_embd
        # SwiGLU's gate and value come from one matmul (twice as wide), split in forward.
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=cfg.bias)
        self.split_matrices = {"fc.weight": 2} if cfg.mlp == "swiglu" else {}
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()  # ReLU²: sparse like ReLU, smooth enough to train fast
        else:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm Transformer block: attention then MLP, each added to the residual stream. An encoder's
    block attends both ways (causal=False); a decoder's (cross=True) adds cross-attention to the
    encoder's output between its self-attention and its MLP."""

    def __init__(self, cfg: ModelConfig, layer: int = 0, causal: bool = True, cross: bool = False):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg, layer, causal=causal)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.ln_cross = make_norm(cfg) if cross else None
        self.cross = Attention(cfg, layer, cross=True) if cross else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: AttentionCache | None = None, mask: torch.Tensor | None = None,
                memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, mask=mask)
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), memory=memory, mask=memory_mask)
        return x + self.mlp(self.ln_2(x))
