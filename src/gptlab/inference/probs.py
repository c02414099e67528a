"""The probabilities behind each choice: the next-token distribution and its top candidates.

`gptlab sample --show-probs` and the web page both use these, so they show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.model.gpt import GPT
from gptlab.tokenizers import Tokenizer


@dataclass
class Candidate:
    """One possible next token."""

    id: int
    piece: str  # the text this token stands for on its own
    prob: float  # probability under the distribution it came from


def next_token_probs(model: GPT, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """Softmax over the vocabulary for the token after ids (the last block_size of them), shape (V,).

    temperature 0 is treated as 1 here: greedy decoding still picks from this distribution's top.
    It is the engine's own first step, so `sample --show-probs` and the server give the same numbers.
    """
    steps = generate_steps(model, None, [ids], SamplingParams(1, temperature), with_probs=True)
    (event,) = [e for step in steps for e in step]
    assert event.probs is not None  # asked for with_probs
    return event.probs


def top_candidates(tokenizer: Tokenizer, probs: torch.Tensor, k: int) -> list[Candidate]:
    """The k most likely tokens of a distribution, most likely first."""
    values, indices = torch.topk(probs, min(k, probs.numel()))
    return [Candidate(int(i), tokenizer.id_to_piece(int(i)), float(v)) for v, i in zip(values, indices)]
