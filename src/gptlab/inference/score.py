"""Prompt scoring: the log-probability the model gives each token of a sequence after the ones
before it, and the most likely alternatives at each position (what `echo` with `logprobs` returns,
and what lm-evaluation-harness sums into loglikelihoods).

One forward pass over the ids with the model's own causal mask: position i's logits predict token
i+1, exactly as the training loss reads them. The first token has nothing before it, so no score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.inference.engine import eval_mode
from gptlab.model.gpt import GPT


@dataclass
class TokenScore:
    """One token of a scored sequence."""

    id: int
    logprob: float | None  # log P(this token | the tokens before it); None for the first token
    top: list[tuple[int, float]]  # the top-k (id, logprob) at its position, most likely first; [] for the first


@torch.no_grad()
def score_tokens(model: GPT, ids: list[int], top_k: int = 0) -> list[TokenScore]:
    """Every token's log-probability given the ones before it, with the top_k alternatives.

    ids must fit the model's context (block_size); callers refuse longer ones.
    """
    if not ids:
        return []
    if len(ids) > model.config.block_size:
        raise ValueError(f"{len(ids)} tokens exceed block_size={model.config.block_size}")
    device = next(model.parameters()).device
    with eval_mode(model):
        logits, _ = model(torch.tensor([ids], device=device))
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # (T-1, V): position i predicts token i+1
    chosen = logp.gather(1, torch.tensor(ids[1:], device=device)[:, None])[:, 0].tolist()
    if top_k:
        values, indices = torch.topk(logp, min(top_k, logp.size(-1)), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [TokenScore(ids[0], None, [])] + [TokenScore(t, lp, top) for t, lp, top in zip(ids[1:], chosen, tops)]
