"""Sampling: turn the next-token logits into one chosen id (greedy, temperature, top-k, top-p,
repetition penalty)."""

from __future__ import annotations

import torch


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of logits (..., V) at a temperature, in float32; temperature 0 is treated as 1
    (greedy decoding still picks this distribution's top)."""
    t = temperature if temperature > 0 else 1.0
    return torch.softmax(logits.float() / t, dim=-1)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by temperature and set logits outside the top-k / top-p (nucleus) set to -inf.

    logits: (B, V). temperature must be > 0 here (0 means greedy: see sample_rows).
    """
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked before it already reach top_p; the top one always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop_sorted[..., 0] = False  # even when top_p rounds to 0 in float32
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already in the context less likely (CTRL's rule): their positive logits are
    divided by penalty, their negative ones multiplied by it, so penalty > 1 always lowers them.

    logits: (B, V); seen: (B, V) booleans, True where the token occurs in that row's context.
    """
    if penalty == 1.0:
        return logits
    logits = logits.float()
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_rows(
    logits: torch.Tensor,
    generators: list[torch.Generator],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """One id per row of logits (B, V) -> (B,), row b drawn with generators[b].

    A generator per row makes each sequence's draws independent of what else shares the batch:
    the same seed gives the same text alone or batched, with or without the KV cache.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])
