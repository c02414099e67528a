"""The layers every architecture here is built from, each variant chosen by a config value.

    norm:      LayerNorm (GPT-2) | RMSNorm (scale only, no mean subtraction)
    position:  learned absolute embedding (in ends.py) | rotary (RoPE): q and k rotated by position
    attention: multi-head self-attention (causal, or bidirectional for an encoder) or cross-attention
               (keys and values from another sequence); optional QK-norm; its own weights on request
    mlp:       GELU 4x (exact or tanh form) | ReLU² 4x | SwiGLU (~8/3x wide, so its three matrices hold as many weights)
    values:    attention's v alone | v plus a gated value embedding of the token (value_embeds, alternate layers)
    residual:  x as it comes | resid_lambda · x + x0_lambda · x0, learned per block (resid_mix)
    smear:     the token embedding alone | plus a gated share of the previous token's (a one-token look-back)

RMSNorm, RoPE's rotation and ReLU² are computed by model/ops.py (hand-written backward passes: the CPU
has no fused kernel for them), and attention norms and rotates q's and k's heads together, one call each.

Each module also hands its intermediates to a recorder while model/record.py's recording() is on
(`gptlab trace`): one `self._rec(name, tensor, axes, operation)` per stage, which does nothing when
recording is off, so forward computes exactly what it computes without them. An operation is written
with its bias term (x · W + b); the recorder drops it for a layer without biases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import ModelConfig
from gptlab.model.ops import relu_squared, rms_norm, rotate
from gptlab.model.record import Recordable

# The norms' epsilon (added to the variance before dividing), a fact export and import check against.
LAYERNORM_EPS = 1e-5  # torch's LayerNorm default, and GPT-2's layer_norm_epsilon
RMSNORM_EPS = 1e-6  # RMSNorm, the residual stream's and QK-norm's (transformers' Llama and Qwen3 default)

# The value-embedding gate reads this many leading channels of the normed input: enough to decide per head
# how much of the token's own value vector to add, at a negligible cost (one small matrix per layer).
VALUE_GATE_CHANNELS = 32
# resid_mix's starting weights: the stream as it is, plus a little of the embedding x0 in every block.
RESID_LAMBDA_INIT, X0_LAMBDA_INIT = 1.0, 0.1


def has_value_embed(cfg: ModelConfig, layer: int) -> bool:
    """Whether a layer adds a value embedding (value_embeds): every other layer, counted back from the last
    one, so the last layer always has one."""
    return cfg.value_embeds and layer % 2 == (cfg.n_layer - 1) % 2


class Linear(nn.Linear):
    """nn.Linear, whose product an inference engine may take over while it decodes (`product`, set and
    cleared by inference/products.py, which gives every row the same result whatever the batch).
    Unset, as in training, it is nn.Linear exactly."""

    product: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.product is not None:
            return self.product(x)
        return super().forward(x)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (its weight, eps and state dict) computed by ops.rms_norm, whose hand-written backward
    the CPU has no fused kernel for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps  # None: torch's default, as nn.RMSNorm
        return rms_norm(x, self.weight, eps)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The normalisation layer the config asks for, over the last dim (n_embd unless given)."""
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=RMSNORM_EPS)
    return nn.LayerNorm(dim, eps=LAYERNORM_EPS, bias=cfg.bias)


class Rotary(Recordable):
    """Rotary position embedding: each pair of a head's channels is rotated by an angle that grows
    with the position, so q·k depends only on the distance between positions, not where they are.

    The angles are computed for the positions asked (per row), so a KV cache may keep going past
    block_size: keys keep the rotation they were stored with.

    The tables it returns are laid out for `heads` heads side by side (attention rotates q's and k's
    heads in one call, ops.rotate): one product over contiguous rows, where broadcasting one head's
    channels over the heads cost half as much again per product (measured at the CPU demo's shape).
    """

    inv_freq: torch.Tensor
    sign: torch.Tensor

    def __init__(self, head_dim: int, base: float, heads: int = 1):
        super().__init__()
        self.heads = heads
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # ops.rotate's signed sine: the first channel of each pair takes −sin, the second +sin.
        self.register_buffer("sign", torch.tensor([-1.0, 1.0]).repeat_interleave(head_dim // 2), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ops.rotate's cos and signed sin of the angles, (T, heads, head_dim), or (B, T, heads,
        head_dim) for per-row positions (B, T)."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        self._rec("angles", angles, "T D/2", "position t × base^(−2i/D), one angle per channel pair i")
        angles = torch.cat((angles, angles), dim=-1)[..., None, :]  # each pair's angle on both its channels
        shape = (*angles.shape[:-2], self.heads, angles.size(-1))
        return angles.cos().expand(shape).contiguous(), (angles.sin() * self.sign).expand(shape).contiguous()


class Smear(Recordable):
    """A one-token look-back on the token embeddings: x_t + λ · sigmoid(gate · x_t[:G]) · x_{t-1}, so the
    first layer already sees each token with its predecessor (bigrams) without spending attention on it.
    λ starts at 0: the model starts as the one without smear and learns how much to take."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Linear(min(VALUE_GATE_CHANNELS, cfg.n_embd), 1, bias=False)
        self.smear_lambda = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, table: nn.Embedding, previous: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) token embeddings of ids whose predecessors are previous (B, T) (-1: none, a
        sequence's first token): x plus the gated embedding of each predecessor."""
        prev = table(previous.clamp(min=0)) * (previous >= 0)[..., None]
        gate = torch.sigmoid(self.gate(x[..., : self.gate.in_features]))  # (B, T, 1)
        x = x + self.smear_lambda * gate * prev
        self._rec("smear", x, "T C", "x_t + λ · sigmoid(x_t[:G] · W_gate) · x_{t−1} (one-token look-back)")
        return x


def previous_in_row(ids: torch.Tensor) -> torch.Tensor:
    """Each id's predecessor within its row (B, T), -1 for the first: the look-back of a feed that starts
    its sequences."""
    return torch.cat((torch.full_like(ids[:, :1], -1), ids[:, :-1]), dim=1)


class AttentionCache(Protocol):
    """What the model asks of a KV cache (implementations: inference/kv_cache.py): the positions of the
    tokens fed next, each attention layer's output over the stored keys and values plus the new ones,
    and, after all layers, how many real tokens each row gained; for a model with smear, each fed
    token's predecessor, which for the first token of a feed was fed before."""

    def positions(self, T: int) -> torch.Tensor: ...

    def previous_ids(self, ids: torch.Tensor) -> torch.Tensor: ...

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...

    def advance(self, lengths: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class CacheLayout:
    """The shape of a KV cache for a model's cached attention layers (its decoder's self-attention)."""

    n_layer: int
    n_head: int
    head_dim: int
    capacity: int  # positions kept per row
    can_slide: bool  # whether a full row may overwrite its oldest entry and go on (RoPE)
    device: torch.device


def cache_layout(
    layers: list[Attention], block_size: int, can_slide: bool, device: torch.device, capacity: int | None = None
) -> CacheLayout:
    """The layout of a cache serving these attention layers (capacity: block_size unless given)."""
    capacity = capacity or block_size
    if capacity <= 0:
        raise ValueError(f"cache capacity {capacity} must be > 0")
    if not can_slide and capacity > block_size:
        raise ValueError(
            f"cache capacity {capacity} exceeds block_size={block_size}, past which learned positions do not exist"
        )
    return CacheLayout(len(layers), layers[0].n_head, layers[0].head_dim, capacity, can_slide, device)


class Attention(Recordable):
    """Multi-head attention. Self-attention: causal (position t sees positions <= t) or, with
    causal=False, bidirectional over the whole sequence (an encoder reading its source). Cross-attention
    (cross=True): queries from x, keys and values from another sequence, the encoder's output."""

    def __init__(self, cfg: ModelConfig, layer: int = 0, causal: bool = True, cross: bool = False):
        super().__init__()
        self.layer = layer  # its index into a KV cache
        self.causal, self.cross = causal and not cross, cross
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.head_dim = cfg.head_dim
        if cross:
            # Queries and keys/values read different sequences, so they are separate matmuls.
            self.q = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
            self.kv = Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)
            self.split_matrices = {"kv.weight": 2}
        else:
            self.qkv = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
            # q, k and v are three matrices side by side: an optimizer that treats matrices whole (Muon)
            # takes them apart.
            self.split_matrices = {"qkv.weight": 3}
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim, eps=RMSNORM_EPS) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=RMSNORM_EPS) if cfg.qk_norm else None
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.value_embed: nn.Embedding | None = None
        self.value_gate: Linear | None = None
        if not cross and has_value_embed(cfg, layer):
            # A per-token vector added to the values: the token's identity reaches this layer's output
            # directly, whatever the residual stream has made of it. The gate (zero at the start: weight 1)
            # chooses per head how much.
            self.value_embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.value_gate = Linear(min(VALUE_GATE_CHANNELS, cfg.n_embd), cfg.n_head, bias=False)

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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cross:
            if memory is None:
                raise ValueError("cross-attention needs memory: the encoder's output or its keys_values()")
            q = self._heads(self.q(x))
            k, v = memory if isinstance(memory, tuple) else self.keys_values(memory)
            # No rotation: a target position and a source position are not on one axis.
            return (self.q_norm(q) if self.q_norm is not None else q), k, v
        qkv = self.qkv(x)
        self._rec("qkv", qkv, "T 3C", "[T×C] · W_qkv [C×3C] + b")
        B, T, _ = qkv.shape
        H = self.n_head
        qk, v = qkv.split((2 * self.n_embd, self.n_embd), dim=2)
        # q's heads then k's side by side, (B, T, 2H, D): normed and rotated in one call each.
        qk = qk.view(B, T, 2 * H, self.head_dim)
        v = self._heads(v)
        self._rec_qk("q", "k", qk, "{} third of qkv [T×C], split into H heads of D channels")
        self._rec("v", v, "H T D", "v third of qkv [T×C], split into H heads of D channels")
        if self.q_norm is not None and self.k_norm is not None:  # both or neither (cfg.qk_norm)
            # QK-norm bounds the attention logits, so a high learning rate cannot blow up the softmax.
            weight = torch.stack((self.q_norm.weight, self.k_norm.weight)).repeat_interleave(H, dim=0)  # (2H, D)
            qk = rms_norm(qk, weight, RMSNORM_EPS)
            self._rec_qk("q_norm", "k_norm", qk, "{} / rms · γ over D, per head (QK-norm)", "RMSNorm")
        if rope is not None:
            qk = rotate(qk, *rope)
            self._rec_qk("q_rope", "k_rope", qk, "each channel pair of {} rotated by its angle at t (RoPE)", "Rotary")
        q, k = qk.transpose(1, 2).split(H, dim=1)
        return q, k, v

    def _rec_qk(self, q_name: str, k_name: str, qk: torch.Tensor, op: str, kind: str | None = None) -> None:
        """Record q's and k's heads (B, H, T, D) of qk (B, T, 2H, D) as two stages, op naming each."""
        if self.record is not None:
            q, k = qk.transpose(1, 2).split(self.n_head, dim=1)
            self._rec(q_name, q, "H T D", op.format("q"), kind)
            self._rec(k_name, k, "H T D", op.format("k"), kind)

    def _mix_values(self, v: torch.Tensor, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """v (B, H, T, D) plus each token's value embedding, scaled per head by 2·sigmoid(gate(x)) in (0, 2)."""
        if self.value_embed is None or self.value_gate is None:  # both or neither
            return v
        if ids is None:
            raise ValueError("a layer with a value embedding needs the token ids (ids=)")
        ve = self._heads(self.value_embed(ids))
        self._rec("value_embed", ve, "H T D", "rows ids of W_ve [V×C], split into H heads", "Embedding")
        gate = 2 * torch.sigmoid(self.value_gate(x[..., : self.value_gate.in_features]))  # (B, T, H)
        self._rec("value_gate", gate, "T H", "2 · sigmoid(x[:, :G] · W_gate [G×H]), one weight per head")
        v = v + gate.transpose(1, 2)[..., None] * ve
        self._rec("v_mixed", v, "H T D", "v + gate · value embedding, per head")
        return v

    def _weights(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
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
        self._rec("scores", scores, "H T T", "q [H×T×D] · kᵀ [H×D×T] / √D")
        self._rec("scores_masked", masked, "H T T", "scores with the future (column > row) set to −∞")
        self._rec("weights", weights, "H T T", "softmax over each row (the keys)")
        return weights

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: AttentionCache | None = None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). memory: cross-attention's source (B, S, C), or its keys_values();
        mask: which keys each query may see (True: may), broadcast to (B, H, T, keys), e.g. a source's
        padding; a causal layer masks the future itself. ids (B, T): the tokens x stands for, which a
        layer with a value embedding looks up."""
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope, memory)
        v = self._mix_values(v, x, ids)
        if self.record is not None and cache is None and not self.cross:
            # Recording: the weights the kernel below applies, from the same q and k (it never
            # materialises them), computed for the recorder alone.
            self._weights(q, k)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None or self.cross:
            # Fused kernel (flash attention where available); is_causal masks the future.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, dropout_p=dropout_p)
        else:
            # Inference: the cache stores the new keys and values and attends over all its rows may see.
            y = cache.attend(self.layer, q, k, v)
        self._rec("weighted", y, "H T D", "weights [H×T×T] · v [H×T×D]")
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        self._rec("heads", y, "T C", "the H heads' [T×D] side by side")
        out = self.proj(y)
        self._rec("proj", out, "T C", "[T×C] · W_proj [C×C] + b")
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


# The operation each non-linearity applies to the MLP's widened input, as a recorded stage describes it.
ACTIVATION_OPS = {"gelu": "GELU(fc)", "gelu_tanh": "GELU(fc), tanh form", "relu2": "ReLU(fc)²"}


class MLP(Recordable):
    """Position-wise feed-forward network: widen, a non-linearity, project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = mlp_hidden(cfg)
        # SwiGLU's gate and value come from one matmul (twice as wide), split in forward.
        self.fc = Linear(cfg.n_embd, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=cfg.bias)
        self.split_matrices = {"fc.weight": 2} if cfg.mlp == "swiglu" else {}
        self.proj = Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            self._rec("fc", h, "T 2F", "[T×C] · W_fc [C×2F] + b")
            gate, value = h.chunk(2, dim=-1)
            self._rec("gate", gate, "T F", "first half of fc")
            self._rec("value", value, "T F", "second half of fc")
            h = F.silu(gate) * value
            self._rec("swiglu", h, "T F", "SiLU(gate) ⊙ value")
        else:
            self._rec("fc", h, "T F", "[T×C] · W_fc [C×F] + b")
            if self.kind == "gelu":
                h = F.gelu(h)
            elif self.kind == "gelu_tanh":
                h = F.gelu(h, approximate="tanh")  # the form OpenAI's GPT-2 weights were trained with
            else:
                h = relu_squared(h)  # ReLU²: sparse like ReLU, smooth enough to train fast
            self._rec(self.kind, h, "T F", ACTIVATION_OPS[self.kind])
        out = self.proj(h)
        self._rec("proj", out, "T C", "[T×F] · W_proj [F×C] + b")
        return self.dropout(out)


class Block(Recordable):
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
        self.resid_lambda: nn.Parameter | None = None
        self.x0_lambda: nn.Parameter | None = None
        if cfg.resid_mix:
            # Learned per block: how much of the stream to keep and how much of the embedding x0 to add
            # back in, so a deep layer can still read the tokens themselves.
            self.resid_lambda = nn.Parameter(torch.full((1,), RESID_LAMBDA_INIT))
            self.x0_lambda = nn.Parameter(torch.full((1,), X0_LAMBDA_INIT))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: AttentionCache | None = None,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). x0: the embedding the stream started from (resid_mix); ids: the
        tokens (value embeddings)."""
        if self.resid_lambda is not None and self.x0_lambda is not None:  # both or neither (cfg.resid_mix)
            if x0 is None:
                raise ValueError("a block with resid_mix needs the embedding x0 (x0=)")
            x = self.resid_lambda * x + self.x0_lambda * x0
            self._rec("resid_mix", x, "T C", "λ_resid · x + λ_x0 · x0 (x0: the embedding)")
        h = self.ln_1(x)
        self._rec_norm("ln_1", x, h)
        x = x + self.attn(h, rope, cache, mask=mask, ids=ids)
        self._rec("resid_attn", x, "T C", "x + attention: the residual stream after attention")
        if self.cross is not None and self.ln_cross is not None:  # both or neither (a decoder block's)
            h = self.ln_cross(x)
            self._rec_norm("ln_cross", x, h)
            x = x + self.cross(h, memory=memory, mask=memory_mask)
            self._rec("resid_cross", x, "T C", "x + cross-attention to the encoder's output")
        h = self.ln_2(x)
        self._rec_norm("ln_2", x, h)
        x = x + self.mlp(h)
        self._rec("resid_mlp", x, "T C", "x + MLP: the residual stream after the block")
        return x


def as_blocks(modules: nn.ModuleList) -> list[Block]:
    """The Blocks a ModuleList of them holds, typed as such (iterating a ModuleList yields plain Modules)."""
    return cast("list[Block]", list(modules))
