"""Generation for people: a prompt's ids, and the continuation of a prompt as streamed text."""

from __future__ import annotations

from collections.abc import Iterator

from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.model import Model
from gptlab.tokenizers import Tokenizer


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from a document boundary (it needs one token)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    return ids


def complete(
    model: Model,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    **options,
) -> Iterator[str]:
    """Stream the continuation of one prompt as text pieces (options: more SamplingParams fields)."""
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed=seed, **options)
    for steps in generate_steps(model, tokenizer, [prompt_ids(tokenizer, prompt)], params):
        if steps[0].text:
            yield steps[0].text
