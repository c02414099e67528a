"""Generation with an encoder–decoder: read a source, write its target.

    source -> encoder (once) -> memory -> each decoder layer's cross-attention keys/values (once)
    [sep] -> decoder (+ KV cache on its self-attention) -> next-token logits -> sampler -> token -> ...
    until the separator (the target's end), max_new_tokens, or block_size target positions.

Without the cache every step re-encodes the source and recomputes the whole target so far: the
reference the cached path must match token for token.
"""

from __future__ import annotations

import os

import torch

from gptlab.data.pairs import separator_id
from gptlab.errors import GptlabError
from gptlab.inference.engine import SamplingParams, eval_mode
from gptlab.inference.kv_cache import KVCache
from gptlab.inference.sampling import apply_repetition_penalty, sample_rows
from gptlab.tokenizers import Tokenizer


def _stepper(model: torch.nn.Module, source: torch.Tensor, use_cache: bool):
    """A function from the target ids so far (B, t) to the next-token logits (B, V)."""
    if not use_cache:
        return lambda ids: model(ids, source=source)[0][:, -1].float()
    cross = model.cross_keys_values(model.encode(source))  # the source is read once
    attn = model.decoder_self_attention()[0]
    cache = KVCache(
        len(model.decoder), source.size(0), attn.n_head, attn.head_dim, model.config.block_size, source.device
    )
    return lambda ids: model.decode(ids[:, -1:], cross, cache=cache)[:, -1].float()


@torch.no_grad()
def generate_targets(
    model: torch.nn.Module,
    sep: int,
    source_ids: list[int],
    params: SamplingParams,
    num_samples: int = 1,
    use_cache: bool = True,
) -> list[list[int]]:
    """num_samples targets (ids, without the end token) for one source, sampled together; sample i
    draws with seed + i, so the same seed gives the same targets with or without the cache."""
    params.validate()
    if not source_ids:
        raise GptlabError("the source is empty: give the encoder at least one token")
    if len(source_ids) > model.config.block_size:
        raise GptlabError(f"the source is {len(source_ids)} tokens, more than block_size={model.config.block_size}")
    device = next(model.parameters()).device
    base = params.seed if params.seed is not None else int.from_bytes(os.urandom(6), "big")
    generators = [torch.Generator(device=device).manual_seed(base + i) for i in range(num_samples)]
    source = torch.tensor([source_ids] * num_samples, dtype=torch.long, device=device)
    ids = torch.full((num_samples, 1), sep, dtype=torch.long, device=device)
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    seen = torch.zeros(num_samples, model.config.vocab_size, dtype=torch.bool, device=device)
    seen[:, source_ids] = True  # the context a repetition penalty looks at: source and target so far
    with eval_mode(model):
        step = _stepper(model, source, use_cache)
        # The decoder's inputs take positions 0..block_size-1: at most block_size tokens come out.
        for _ in range(min(params.max_new_tokens, model.config.block_size)):
            logits = apply_repetition_penalty(step(ids), seen, params.repetition_penalty)
            token = sample_rows(logits, generators, params.temperature, params.top_k, params.top_p)
            token = torch.where(done, torch.full_like(token, sep), token)
            done |= token == sep
            seen[torch.arange(num_samples, device=device), token] = True
            ids = torch.cat([ids, token[:, None]], dim=1)
            if bool(done.all()):
                break
    out = []
    for row in ids[:, 1:].tolist():
        out.append(row[: row.index(sep)] if sep in row else row)
    return out


def translate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    source: str,
    params: SamplingParams,
    num_samples: int = 1,
    use_cache: bool = True,
) -> list[str]:
    """The targets (text) an encoder–decoder writes for a source text, cut before any stop string."""
    ids = generate_targets(model, separator_id(tokenizer), tokenizer.encode(source), params, num_samples, use_cache)
    texts = []
    for row in ids:
        text = tokenizer.decode(row)
        for stop in params.stop:
            text = text.split(stop)[0]
        texts.append(text)
    return texts
