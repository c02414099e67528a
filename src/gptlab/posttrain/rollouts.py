"""Rollouts: a group of answers to each prompt, drawn from the policy through the inference engine
(inference/engine.generate_steps, the decoding core every caller shares), kept as token ids and text.

Answer g to prompt p is sequence p x group + g of one engine request, so it draws with the request's
seed + that index: the same seed gives the same answers, alone or batched, now or after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.model.gpt import GPT
from gptlab.tokenizers import Tokenizer


@dataclass
class Rollout:
    """One answer: its tokens (the end-of-turn token last when it ended), its text, whether it ended."""

    prompt: int  # index of the prompt it answers
    ids: list[int]
    text: str
    ended: bool


def rollouts(
    model: GPT, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]], group: int, params: SamplingParams, end: int
) -> list[Rollout]:
    """group answers to each prompt (ids), prompt-major: the answers to prompt 0, then to prompt 1...
    An answer ends with the end token (it stays in ids: ending is something the policy learns) or at
    params.max_new_tokens."""
    rows = [list(ids) for ids in prompts for _ in range(group)]
    out = [Rollout(i // group, [], "", False) for i in range(len(rows))]
    for steps in generate_steps(model, tokenizer, rows, params, end=end):
        for event in steps:
            r = out[event.seq]
            if event.token is not None:
                r.ids.append(event.token)
            r.text += event.text
            r.ended = r.ended or event.token == end
    return out
