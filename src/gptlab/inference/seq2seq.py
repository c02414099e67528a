"""Generation with an encoder–decoder: read a source, write its target.

    source -> encoder (once) -> memory -> each decoder layer's cross-attention keys/values (once)
    [sep] -> decoder (+ KV cache on its self-attention) -> next-token logits -> decoding.step -> token -> ...
    until the separator (the target's end), max_new_tokens, or block_size target positions.

Without the cache every step re-encodes the source and recomputes the whole target so far: the
reference the cached path must match token for token.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptlab.data.pairs import separator_id
from gptlab.errors import GptlabError
from gptlab.inference import decoding
from gptlab.inference.decoding import Event, SamplingParams, SequenceState
from gptlab.inference.engine import eval_mode
from gptlab.inference.kv_cache import KVCache
from gptlab.model.encdec import EncoderDecoder
from gptlab.tokenizers import Tokenizer


def _stepper(model: EncoderDecoder, source: torch.Tensor, use_cache: bool):
    """A function from the target ids so far (B, t) to the next-token logits (B, V)."""
    if not use_cache:
        return lambda ids: model(ids, source=source)[0][:, -1]
    cross = model.cross_keys_values(model.encode(source))  # the source is read once
    cache = KVCache(model.cache_layout(), source.size(0))
    return lambda ids: model.decode(ids[:, -1:], cross, cache=cache)[:, -1]


@torch.no_grad()
def target_steps(
    model: EncoderDecoder,
    sep: int,
    source_ids: list[int],
    params: SamplingParams,
    num_samples: int = 1,
    use_cache: bool = True,
    tokenizer: Tokenizer | None = None,
) -> Iterator[list[Event]]:
    """num_samples targets for one source, sampled together, one Event per sequence still going per
    step; a target ends at the separator (its end token), a stop string, max_new_tokens, or
    block_size target positions. Sample i draws with seed + i, so the same seed gives the same
    targets with or without the cache."""
    params.validate()
    if not source_ids:
        raise GptlabError("the source is empty: give the encoder at least one token")
    if len(source_ids) > model.config.block_size:
        raise GptlabError(f"the source is {len(source_ids)} tokens, more than block_size={model.config.block_size}")
    # The repetition penalty looks at the source and the target so far; the decoder's inputs take
    # positions 0..block_size-1, so at most block_size tokens come out.
    states = [
        SequenceState(source_ids, params, i, tokenizer, end=sep, limit=model.config.block_size)
        for i in range(num_samples)
    ]
    if params.max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    source = torch.tensor([source_ids] * num_samples, dtype=torch.long, device=device)
    ids = torch.full((num_samples, 1), sep, dtype=torch.long, device=device)
    with eval_mode(model):
        step = _stepper(model, source, use_cache)
        going = list(range(num_samples))
        while going:
            logits = step(ids)
            events = decoding.step([states[i] for i in going], logits[going])
            yield events
            # Every row is fed on (the batch shares one cache): a finished one with its end token.
            nxt = torch.full((num_samples, 1), sep, dtype=torch.long)
            for i in going:
                nxt[i, 0] = states[i].ids[-1] if states[i].finish is None else sep
            ids = torch.cat([ids, nxt.to(device)], dim=1)
            going = [i for i, event in zip(going, events) if event.finish is None]


def generate_targets(
    model: EncoderDecoder,
    sep: int,
    source_ids: list[int],
    params: SamplingParams,
    num_samples: int = 1,
    use_cache: bool = True,
) -> list[list[int]]:
    """num_samples targets (ids, without the end token) for one source (see target_steps)."""
    out: list[list[int]] = [[] for _ in range(num_samples)]
    for events in target_steps(model, sep, source_ids, params, num_samples, use_cache):
        for e in events:
            if e.token is not None and e.token != sep:
                out[e.seq].append(e.token)
    return out


def translate(
    model: EncoderDecoder,
    tokenizer: Tokenizer,
    source: str,
    params: SamplingParams,
    num_samples: int = 1,
    use_cache: bool = True,
) -> list[str]:
    """The targets (text) an encoder–decoder writes for a source text, cut before any stop string."""
    texts = [""] * num_samples
    sep = separator_id(tokenizer)
    for events in target_steps(model, sep, tokenizer.encode(source), params, num_samples, use_cache, tokenizer):
        for e in events:
            texts[e.seq] += e.text
    return texts
