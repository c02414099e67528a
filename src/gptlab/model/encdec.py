"""The encoder–decoder Transformer of "Attention is all you need", built from the GPT's layers and ends.

    source ids (B,S) -> token embedding (+ source positions) -> n_layer x Block(causal=False)
                     -> encoder norm -> memory (B,S,C)
    target ids (B,T) -> token embedding (+ target positions)
                     -> n_layer x Block(cross=True)[ x + self-attn(causal), x + cross-attn(memory), x + mlp ]
                     -> final norm -> unembedding (tied to the one token embedding, or its own) -> logits (B,T,V)

Source and target share the tokenizer, so one token embedding serves both (and the tied head).
A source is right-padded to its batch's longest; source_mask (B,S) says which positions are real,
and neither the encoder nor cross-attention attends to the rest. The decoder sees the source only
through cross-attention. Inference encodes the source once, computes each layer's cross-attention
keys and values once, and decodes with a KV cache on the decoder's self-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.config import ModelConfig
from gptlab.model.ends import LanguageModel
from gptlab.model.gpt import Role, init_weights, roles_by_name
from gptlab.model.layers import Attention, AttentionCache, Block, CacheLayout, as_blocks, cache_layout, make_norm
from gptlab.model.loss import lm_loss

# Per-layer cross-attention keys and values of one encoded source (Attention.keys_values).
CrossKV = list[tuple[torch.Tensor, torch.Tensor]]


class EncoderDecoder(LanguageModel):
    """Encoder over a source sequence, decoder over the target with cross-attention to it."""

    wpe_source: nn.Embedding | None
    wpe: nn.Embedding | None

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # One token embedding for both halves, but each its own learned positions: source position 3
        # and target position 3 mean different things.
        self._add_embedder("wpe_source", "wpe")
        self.encoder = nn.ModuleList(Block(cfg, i, causal=False) for i in range(cfg.n_layer))
        self.ln_encoder = make_norm(cfg)
        self.decoder = nn.ModuleList(Block(cfg, i, cross=True) for i in range(cfg.n_layer))
        self._add_output_head()
        # GPT-2's scaling by the residual branches that add up: 2 per encoder block, 3 per decoder block.
        init_weights(self, lambda name: 2 if name.startswith("encoder.") else 3)

    # The decoder's cache keys hold their positions' embeddings: it cannot slide past block_size.
    cache_can_slide = False

    def parameter_roles(self) -> dict[str, tuple[Role, int]]:
        """Each parameter's role and how many matrices lie stacked in it, as GPT.parameter_roles."""
        return roles_by_name(self)

    def attention_layers(self) -> list[Attention]:
        """Every attention module: the encoder's, then each decoder block's self- and cross-attention."""
        encoder, decoder = as_blocks(self.encoder), as_blocks(self.decoder)
        return [b.attn for b in encoder] + [a for b in decoder for a in (b.attn, _cross(b))]

    def cache_layout(self, capacity: int | None = None) -> CacheLayout:
        """The shape of a KV cache for the decoder's self-attention, the only attention it serves (the
        encoder runs once per source; cross-attention keys come from cross_keys_values)."""
        layers = [b.attn for b in as_blocks(self.decoder)]
        return cache_layout(layers, self.config.block_size, self.cache_can_slide, self.wte.weight.device, capacity)

    def _check_length(self, n: int, what: str) -> None:
        if n > self.config.block_size:
            raise ValueError(f"{what} of length {n} exceeds block_size={self.config.block_size}")

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, S, C) for source ids (B, S); source_mask (B, S) True on real tokens."""
        self._check_length(source.size(1), "source")
        x, rope = self.embed(source, torch.arange(source.size(1), device=source.device), "wpe_source")
        mask = _key_mask(source_mask)
        for block in self.encoder:
            x = block(x, rope, mask=mask)
        return self.ln_encoder(x)

    def cross_keys_values(self, memory: torch.Tensor) -> CrossKV:
        """Every decoder layer's cross-attention keys and values of one encoder output."""
        return [_cross(block).keys_values(memory) for block in as_blocks(self.decoder)]

    def decode(
        self,
        idx: torch.Tensor,
        memory: torch.Tensor | CrossKV,
        source_mask: torch.Tensor | None = None,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) of the target ids idx (B, T) attending to memory: the encoder's output, or
        its cross_keys_values(). With a cache, idx continues the targets stored in it and only the last
        position's logits come back, (B, 1, V)."""
        T = idx.size(1)
        if cache is not None:
            positions = cache.positions(T)
        else:
            self._check_length(T, "target")
            positions = torch.arange(T, device=idx.device)
        x, rope = self.embed(idx, positions)
        mask = _key_mask(source_mask)
        for i, block in enumerate(self.decoder):
            layer_memory = memory[i] if isinstance(memory, list) else memory
            x = block(x, rope, cache, memory=layer_memory, memory_mask=mask)
        if cache is not None:
            cache.advance(torch.full((idx.size(0),), T, dtype=torch.long, device=idx.device))
            x = x[:, -1:]
        return self.head(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        source: torch.Tensor,
        source_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) of the decoder inputs idx given source (B, S); with targets, also the mean
        cross-entropy over the targets that are not model.loss.IGNORE."""
        logits = self.decode(idx, self.encode(source, source_mask), source_mask)
        return logits, (lm_loss(logits, targets) if targets is not None else None)


def _cross(block: Block) -> Attention:
    """A decoder block's cross-attention (every decoder block has one)."""
    assert block.cross is not None
    return block.cross


def _key_mask(source_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) real-token flags -> (B, 1, 1, S), the attention mask every query and head shares."""
    return None if source_mask is None else source_mask.bool()[:, None, None, :]
