"""The GPT network: a decoder-only Transformer that reads top to bottom.

    ids (B,T) -> token embedding + position embedding -> dropout
              -> n_layer x Block[ x + attn(ln_1(x)), x + mlp(ln_2(x)) ]
              -> final LayerNorm -> unembedding (tied to the token embedding) -> logits (B,T,V)

Inference passes a KVCache: each layer's keys and values are kept, so a new token only computes
its own and attends to the stored ones (prefill the prompt once, then one token per step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import ModelConfig


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): each head attends in its own subspace.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        if cache is None:
            # Fused kernel (flash attention where available); is_causal masks the future.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        else:
            k, v = cache.store(layer, k, v)
            # mask None: a prefill from position 0 (causal) or one new token that may see everything.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network, 4x wide with GELU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only Transformer language model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embedding
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned absolute position embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Tied unembedding: the same matrix maps ids to vectors and vectors to logits (fewer
        # parameters, and it trains the rows of rare tokens through both uses).
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # Residual projections are scaled down so the residual stream's variance does not grow
        # with depth (GPT-2's 1/sqrt(2 * n_layer)).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for ids (B, T); with targets, also the mean next-token cross-entropy.

        With a cache, idx continues the sequences stored in it and only the last position's logits
        come back, (B, 1, V): generation needs no others, and the unembedding is the costliest matmul.
        """
        if cache is not None:
            return self._forward_cached(idx, cache), None
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def _forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        T = idx.size(1)
        if cache.length + T > cache.capacity:
            raise ValueError(f"KV cache holds {cache.capacity} positions; {cache.length} used, {T} more given")
        x = self.drop(self.wte(idx) + self.wpe(cache.positions(T)))
        mask = cache.mask(T)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, mask)
        cache.length += T
        return self.lm_head(self.ln_f(x[:, -1:, :]))


class KVCache:
    """Keys and values of every layer for a batch of sequences, so past tokens are not recomputed.

    Rows of different lengths are left-padded to a common width: row b starts with pads[b] filler
    columns that no query may attend to, and its real tokens take positions 0, 1, ... as if alone.
    Columns are shared (every row gains one per decode step); capacity is at most block_size
    because the learned position embedding has no row beyond it.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, capacity: int, device: torch.device | str,
                 pads: torch.Tensor | None = None):
        if not 0 < capacity <= cfg.block_size:
            raise ValueError(f"cache capacity {capacity} must be in [1, block_size={cfg.block_size}]")
        self.shape = (cfg.n_layer, batch_size, cfg.n_head, capacity, cfg.n_embd // cfg.n_head)
        self.device = torch.device(device)
        self.k: torch.Tensor | None = None  # allocated on first use, in the dtype the layers compute in
        self.v: torch.Tensor | None = None
        self.capacity, self.length = capacity, 0
        self.pads = pads if pads is not None and bool(pads.any()) else None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one layer's new keys/values (B, H, T, D); return all of them so far."""
        if self.k is None:
            # Uninitialised on purpose: only columns below `length` are ever read.
            self.k = torch.empty(self.shape, device=k.device, dtype=k.dtype)
            self.v = torch.empty(self.shape, device=k.device, dtype=k.dtype)
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        if start == 0:
            # Nothing older to attend to: use the fresh tensors, so a prefill's attention computes
            # exactly what the cache-free forward's does (same numbers, bit for bit).
            return k, v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def positions(self, T: int) -> torch.Tensor:
        """Position ids of the next T columns: (T,), or (B, T) when rows are padded."""
        cols = torch.arange(self.length, self.length + T, device=self.device)
        if self.pads is None:
            return cols
        return (cols[None, :] - self.pads[:, None]).clamp(min=0)

    def mask(self, T: int) -> torch.Tensor | None:
        """Boolean attention mask (B, 1, T, length+T) for the next T columns (True: may attend).

        None where plain causal attention is right: no padding, and either a prefill from column 0
        or a single new token (which sees every stored column).
        """
        if self.pads is None and (self.length == 0 or T == 1):
            return None
        end = self.length + T
        q = torch.arange(self.length, end, device=self.device)[:, None]
        key = torch.arange(end, device=self.device)[None, :]
        allowed = (key <= q)[None, None]
        if self.pads is not None:
            allowed = allowed & (key >= self.pads[:, None, None, None])
            # A filler column attends to itself, so its (unused) output stays finite, never NaN.
            allowed = allowed | (key == q)[None, None]
        return allowed

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the batch), e.g. when the others have finished."""
        if self.k is not None:
            self.k, self.v = self.k[:, rows], self.v[:, rows]
        if self.pads is not None:
            self.pads = self.pads[rows]
