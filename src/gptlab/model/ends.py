"""The two ends every architecture here shares, written once:

    embedder:     ids (B,T) -> token embedding (+ learned position embedding) -> dropout -> (B,T,C);
                  with RoPE, the rotary angles of the positions instead (applied inside attention)
    output head:  (…,C) -> final norm -> unembedding (tied to the token embedding, or its own) -> (soft-cap)
                  -> logits (…,V)

Their modules are the model's own attributes (wte, wpe, rotary, drop; ln_f, lm_head), not a
submodule's: parameter names stay GPT-2's (wte.weight, ln_f.weight, lm_head.weight, ...), which
checkpoints, the export name maps and the trace's stage names all use. So the ends are a base class
both architectures extend: it adds the modules where the model builds them (their order fixes the
initialisation's random draws) and runs them.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.config import ModelConfig
from gptlab.model.layers import Linear, Rotary, Smear, make_norm, previous_in_row
from gptlab.model.record import Recordable


class LanguageModel(Recordable):
    """A Transformer language model's ends: ids in, logits out; subclasses put the blocks between."""

    config: ModelConfig
    wte: nn.Embedding
    rotary: Rotary | None
    drop: nn.Dropout
    ln_f: nn.Module
    lm_head: Linear
    smear: Smear | None  # a GPT with cfg.smear: the one-token look-back on its token embeddings

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        self.config = cfg
        self.smear = None  # an instance attribute (a class default would hide the module a GPT sets)

    def _add_embedder(self, *tables: str) -> None:
        """The token embedding, one learned position table per name in tables (each sequence the
        model reads has its own), or the rotary angles, and the embedding dropout."""
        cfg = self.config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        for name in tables:
            # Learned absolute positions: one vector per position, so nothing past block_size exists.
            setattr(self, name, nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None)
        # Laid out for attention's q and k heads side by side (rotated in one call).
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, 2 * cfg.n_head) if cfg.position == "rope" else None
        self.drop = nn.Dropout(cfg.dropout)

    def _add_output_head(self) -> None:
        """The final norm and the unembedding, tied to the token embedding when the config says so."""
        cfg = self.config
        self.ln_f = make_norm(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # Tied unembedding: the same matrix maps ids to vectors and vectors to logits (fewer
            # parameters, and it trains the rows of rare tokens through both uses).
            self.lm_head.weight = self.wte.weight

    def embed(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        table: str = "wpe",
        previous: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The residual stream's start (B, T, C) for ids at positions ((T,) or (B, T)), and the rotary
        angles for them; table names the learned position table to add (the sequence's own). previous
        (B, T): each id's predecessor for smear (-1: none), by default the one before it in its row."""
        x = self.wte(idx)
        self._rec("ids", idx, "T", "tokenizer(prompt)")
        self._rec("wte", x, "T C", "rows ids of W_te [V×C]", "Embedding")
        if self.smear is not None:
            x = self.smear(x, self.wte, previous if previous is not None else previous_in_row(idx))
        wpe = getattr(self, table)
        if wpe is not None:
            pos = wpe(positions)
            x = x + pos
            self._rec(table, pos, "T C", "rows 0..T−1 of W_pe [block×C]", "Embedding")
            self._rec("embed", x, "T C", "token embedding + position embedding")
        rope = self.rotary(positions) if self.rotary is not None else None
        return self.drop(x), rope

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and soft-cap: the residual stream (…, C) to logits (…, V)."""
        h = self.ln_f(x)
        self._rec_norm("ln_f", x, h)
        logits = self.lm_head(h)
        cap = self.config.logit_softcap
        unembedding = "W_teᵀ" if self.config.tie_embeddings else "W_head"
        self._rec("logits_raw" if cap else "logits", logits, "T V", f"[T×C] · {unembedding} [C×V]", "Linear")
        if cap:
            # tanh bounds every logit to (-cap, cap): no token can become overwhelmingly certain.
            logits = cap * torch.tanh(logits / cap)
            self._rec("logits", logits, "T V", f"{cap:g} · tanh(logits_raw / {cap:g}) (soft-cap)")
        return logits
