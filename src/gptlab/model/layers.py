"""The layers every architecture here is built from, each variant chosen by a config value.

    norm:      LayerNorm (GPT-2) | RMSNorm (scale only, no mean subtraction)
    position:  learned absolute embedding (in gpt.py) | rotary (RoPE): q and k rotated by position
    attention: multi-head self-attention (causal, or bidirectional for an encoder) or cross-attention
               (keys and values from another sequence); optional QK-norm; its own weights on request
    mlp:       GELU 4x (exact or tanh form) | ReLU² 4x | SwiGLU (~8/3x wide, so its three matrices hold as many weights)

Each module also hands its intermediates to a recorder while model/record.py's recording() is on
(`gptlab trace`); off, `record` is None and forward computes exactly what it did without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import ModelConfig
from gptlab.model.record import record_norm

# Each module's `record` is None except while model.record.recording() traces a forward pass: it then
# receives every intermediate the module computes (name, tensor, axes, operation).
Record = Callable[..., None] | None

# The norms' epsilon (added to the variance before dividing), a fact export and import check against.
LAYERNORM_EPS = 1e-5  # torch's LayerNorm default, and GPT-2's layer_norm_epsilon
RMSNORM_EPS = 1e-6  # RMSNorm, the residual stream's and QK-norm's (transformers' Llama and Qwen3 default)


def _bias(linear: nn.Linear) -> str:
    """The bias term of a Linear layer's operation, as a recorded stage describes it."""
    return " + b" if linear.bias is not None else ""


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The normalisation layer the config asks for, over the last dim (n_embd unless given)."""
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=RMSNORM_EPS)
    return nn.LayerNorm(dim, eps=LAYERNORM_EPS, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding: each pair of a head's channels is rotated by an angle that grows
    with the position, so q·k depends only on the distance between positions, not where they are.

    The angles are computed for the positions asked (per row), so a KV cache may keep going past
    block_size: keys keep the rotation they were stored with.
    """

    record: Record = None

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles, (T, head_dim/2) or (B, 1, T, head_dim/2) for per-row positions."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        if self.record is not None:
            self.record(
                "angles",
                angles if angles.dim() == 3 else angles[None],
                "T D/2",
                "position t × base^(−2i/D), one angle per channel pair i",
            )
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

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


class Attention(nn.Module):
    """Multi-head attention. Self-attention: causal (position t sees positions <= t) or, with
    causal=False, bidirectional over the whole sequence (an encoder reading its source). Cross-attention
    (cross=True): queries from x, keys and values from another sequence, the encoder's output."""

    record: Record = None

    def __init__(self, cfg: ModelConfig, layer: int = 0, causal: bool = True, cross: bool = False):
        super().__init__()
        self.layer = layer  # its index into a KV cache
        self.causal, self.cross = causal and not cross, cross
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.head_dim = cfg.head_dim
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
        self.q_norm = nn.RMSNorm(self.head_dim, eps=RMSNORM_EPS) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=RMSNORM_EPS) if cfg.qk_norm else None
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

    def _qkv(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        record: Record = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cross:
            q = self._heads(self.q(x))
            k, v = memory if isinstance(memory, tuple) else self.keys_values(memory)
            # No rotation: a target position and a source position are not on one axis.
            return (self.q_norm(q) if self.q_norm is not None else q), k, v
        qkv = self.qkv(x)
        if record is not None:
            record("qkv", qkv, "T 3C", "[T×C] · W_qkv [C×3C]" + _bias(self.qkv))
        q, k, v = (self._heads(t) for t in qkv.split(self.n_embd, dim=2))
        if record is not None:
            for name, t in (("q", q), ("k", k), ("v", v)):
                record(name, t, "H T D", f"{name} third of qkv [T×C], split into H heads of D channels")
        if self.q_norm is not None:
            # QK-norm bounds the attention logits, so a high learning rate cannot blow up the softmax.
            q, k = self.q_norm(q), self.k_norm(k)
            if record is not None:
                record("q_norm", q, "H T D", "q / rms · γ over D, per head (QK-norm)", "RMSNorm")
                record("k_norm", k, "H T D", "k / rms · γ over D, per head (QK-norm)", "RMSNorm")
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if record is not None:
                record("q_rope", q, "H T D", "each channel pair of q rotated by its angle at t (RoPE)", "Rotary")
                record("k_rope", k, "H T D", "each channel pair of k rotated by its angle at t (RoPE)", "Rotary")
        return q, k, v

    def _weights(
        self, q: torch.Tensor, k: torch.Tensor, record: Record = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Softmax of the scaled q·k with the future (causal) and mask's False keys masked: the weights
        the fused kernel applies."""
        T, S = q.size(-2), k.size(-2)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        masked = scores
        if self.causal:
            future = torch.triu(torch.ones(T, S, dtype=torch.bool, device=q.device), diagonal=1)
            masked = masked.masked_fill(future, float("-inf"))
        if mask is not None:
            masked = masked.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(masked, dim=-1)
        if record is not None:
            record("scores", scores, "H T T", "q [H×T×D] · kᵀ [H×D×T] / √D")
            record("scores_masked", masked, "H T T", "scores with the future (column > row) set to −∞")
            record("weights", weights, "H T T", "softmax over each row (the keys)")
        return weights

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: AttentionCache | None = None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). memory: cross-attention's source (B, S, C), or its keys_values();
        mask: which keys each query may see (True: may), broadcast to (B, H, T, keys), e.g. a source's
        padding; a causal layer masks the future itself."""
        B, T, C = x.shape
        record = self.record
        q, k, v = self._qkv(x, rope, memory, record)
        if record is not None and cache is None and not self.cross:
            # The weights the kernel below applies, from the same q and k; it never materialises them.
            self._weights(q, k, record)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None or self.cross:
            # Fused kernel (flash attention where available); is_causal masks the future.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, dropout_p=dropout_p)
        elif hasattr(cache, "attend"):
            # A cache that attends row by row itself (serve/'s batch of rows of different lengths,
            # each computed exactly as it would be alone).
            y = cache.attend(self.layer, q, k, v)
        else:
            k, v, mask = cache.update(self.layer, k, v)
            # mask None: a prefill from position 0 (plain causal) or one token that may see every key.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=dropout_p
            )
        if record is not None:
            record("weighted", y, "H T D", "weights [H×T×T] · v [H×T×D]")
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        out = self.proj(y)
        if record is not None:
            record("heads", y, "T C", "the H heads' [T×D] side by side")
            record("proj", out, "T C", "[T×C] · W_proj [C×C]" + _bias(self.proj))
        return self.resid_dropout(out)

    @torch.no_grad()
    def weights(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention weights (B, n_head, T, keys) this layer applies to input x: softmax of the
        scaled q·k with the future (causal) and mask's False keys masked, computed from the same q and
        k as forward (QK-norm, RoPE and all)."""
        q, k, _ = self._qkv(x, rope, memory)
        return self._weights(q, k, mask=mask)


# The GPT's attention, under the name its callers know.
CausalSelfAttention = Attention


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU's hidden width: 8/3 x n_embd (three matrices then hold as many weights as a 4x MLP's
    two), rounded up to a multiple of 8."""
    return -(-8 * n_embd // 3 // 8) * 8


def mlp_hidden(cfg: ModelConfig) -> int:
    """The MLP's hidden width: 4x the embedding, or SwiGLU's narrower width for as many weights."""
    return swiglu_hidden(cfg.n_embd) if cfg.mlp == "swiglu" else 4 * cfg.n_embd


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, a non-linearity, project back."""

    record: Record = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = mlp_hidden(cfg)
        # SwiGLU's gate and value come from one matmul (twice as wide), split in forward.
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=cfg.bias)
        self.split_matrices = {"fc.weight": 2} if cfg.mlp == "swiglu" else {}
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        record = self.record
        h = self.fc(x)
        if self.kind == "gelu":
            if record is not None:
                record("fc", h, "T F", "[T×C] · W_fc [C×F]" + _bias(self.fc))
            h = F.gelu(h)
            if record is not None:
                record("gelu", h, "T F", "GELU(fc)")
        elif self.kind == "gelu_tanh":
            if record is not None:
                record("fc", h, "T F", "[T×C] · W_fc [C×F]" + _bias(self.fc))
            h = F.gelu(h, approximate="tanh")  # the form OpenAI's GPT-2 weights were trained with
            if record is not None:
                record("gelu_tanh", h, "T F", "GELU(fc), tanh form")
        elif self.kind == "relu2":
            if record is not None:
                record("fc", h, "T F", "[T×C] · W_fc [C×F]" + _bias(self.fc))
            h = F.relu(h).square()  # ReLU²: sparse like ReLU, smooth enough to train fast
            if record is not None:
                record("relu2", h, "T F", "ReLU(fc)²")
        else:
            gate, value = h.chunk(2, dim=-1)
            if record is not None:
                record("fc", h, "T 2F", "[T×C] · W_fc [C×2F]" + _bias(self.fc))
                record("gate", gate, "T F", "first half of fc")
                record("value", value, "T F", "second half of fc")
            h = F.silu(gate) * value
            if record is not None:
                record("swiglu", h, "T F", "SiLU(gate) ⊙ value")
        out = self.proj(h)
        if record is not None:
            record("proj", out, "T C", "[T×F] · W_proj [F×C]" + _bias(self.proj))
        return self.dropout(out)


class Block(nn.Module):
    """Pre-norm Transformer block: attention then MLP, each added to the residual stream. An encoder's
    block attends both ways (causal=False); a decoder's (cross=True) adds cross-attention to the
    encoder's output between its self-attention and its MLP."""

    record: Record = None

    def __init__(self, cfg: ModelConfig, layer: int = 0, causal: bool = True, cross: bool = False):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg, layer, causal=causal)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.ln_cross = make_norm(cfg) if cross else None
        self.cross = Attention(cfg, layer, cross=True) if cross else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: AttentionCache | None = None,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        record = self.record
        if record is None:
            x = x + self.attn(self.ln_1(x), rope, cache, mask=mask)
            if self.cross is not None:
                x = x + self.cross(self.ln_cross(x), memory=memory, mask=memory_mask)
            return x + self.mlp(self.ln_2(x))
        # The same sums, each part handed to the recorder on the way.
        h = self.ln_1(x)
        record_norm(record, "ln_1", self.ln_1, x, h)
        x = x + self.attn(h, rope, cache, mask=mask)
        record("resid_attn", x, "T C", "x + attention: the residual stream after attention")
        if self.cross is not None:
            h = self.ln_cross(x)
            record_norm(record, "ln_cross", self.ln_cross, x, h)
            x = x + self.cross(h, memory=memory, mask=memory_mask)
            record("resid_cross", x, "T C", "x + cross-attention to the encoder's output")
        h = self.ln_2(x)
        record_norm(record, "ln_2", self.ln_2, x, h)
        x = x + self.mlp(h)
        record("resid_mlp", x, "T C", "x + MLP: the residual stream after the block")
        return x
