"""The inference engine: prefill the prompts once, then decode one token per step with a KV cache,
several sequences in one batch, each token streamed out as it is chosen.

    prompts -> Decoder (model + KV cache) -> next-token logits -> sampler -> tokens -> TextStream -> text
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from gptlab.errors import GptlabError
from gptlab.inference.kv_cache import KVCache
from gptlab.inference.sampling import apply_repetition_penalty, probs_from_logits, sample_rows
from gptlab.inference.text import TextStream
from gptlab.model.gpt import GPT
from gptlab.tokenizers import Tokenizer


@dataclass
class SamplingParams:
    """How to choose each next token, and when to stop."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1: no nucleus filtering
    repetition_penalty: float = 1.0  # 1: none; > 1 discourages tokens already in the context
    stop: Sequence[str] = field(default_factory=tuple)  # the text ends before the first of these
    seed: int | None = None  # sequence i of a batch draws with seed + i; None: a fresh random seed

    def validate(self) -> None:
        """Refuse settings that make no sense, naming the bad one."""
        if self.max_new_tokens < 0:
            raise GptlabError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if not (self.temperature == 0 or 1e-6 <= self.temperature < math.inf):
            # Tinier temperatures overflow the scaled logits (and are greedy in effect).
            raise GptlabError(f"temperature={self.temperature} must be 0 (greedy) or at least 1e-06")
        if self.top_k < 0:
            raise GptlabError(f"top_k={self.top_k} must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise GptlabError(f"top_p={self.top_p} must be in (0, 1]")
        if not 1e-3 <= self.repetition_penalty <= 1e3:  # beyond, penalised logits overflow float32
            raise GptlabError(f"repetition_penalty={self.repetition_penalty} must be in [0.001, 1000] (1 disables it)")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GptlabError(f"seed={self.seed} must be in [0, 2**63)")
        if any(not s for s in self.stop):
            raise GptlabError("stop strings must not be empty")


class Decoder:
    """Next-token logits for a batch of token sequences that grow by one token per step.

    With the cache, the prompts are prefilled once and each step feeds only the newest token.
    Without it, every step recomputes each sequence's whole window (the reference the cache must
    match, token for token, until the window first slides).
    """

    def __init__(self, model: GPT, rows: Sequence[Sequence[int]], use_cache: bool = True):
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("every sequence needs at least one token of context")
        self.model, self.use_cache = model, use_cache
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.rows = [list(r) for r in rows]
        self.cache: KVCache | None = None
        self.new: list[int] | None = None  # the tokens appended since the cache was last fed
        self._last: torch.Tensor | None = None  # logits of the last forward with the cache

    # no_grad here rather than around a whole generation: grad mode is per thread, and a server may
    # resume a generation in a different thread at each step.
    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """Float32 logits (B, V) for the token after each sequence."""
        if not self.use_cache:
            return torch.cat([self._prefill([r]) for r in self.rows])
        if self.cache is None or (self.new is not None and self.cache.full and not self.cache.can_slide):
            # With learned positions the window cannot slide: once the context fills the block,
            # dropping the oldest token moves every kept token to a new position (and, through
            # attention, changes every later layer's keys and values too), so the whole window is
            # recomputed, a prefill of block_size tokens per step. With RoPE (cache.can_slide) the
            # oldest entry is simply overwritten and each step still costs one token.
            return self._prefill(self.rows, keep_cache=True)
        if self.new is not None:
            x = torch.tensor(self.new, dtype=torch.long, device=self.device)[:, None]
            logits, _ = self.model(x, cache=self.cache)
            self.new = None
            self._last = logits[:, -1].float()
        return self._last

    def append(self, tokens: Sequence[int]) -> None:
        """Add one token to each sequence."""
        for row, t in zip(self.rows, tokens):
            row.append(int(t))
        self.new = [int(t) for t in tokens]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these sequences (indices into the current batch), e.g. when the others ended."""
        self.rows = [self.rows[i] for i in rows]
        if self.new is not None:
            self.new = [self.new[i] for i in rows]
        if self._last is not None:
            self._last = self._last[list(rows)]
        if self.cache is not None:
            self.cache.keep(torch.tensor(list(rows), dtype=torch.long, device=self.device))

    def _prefill(self, rows: list[list[int]], keep_cache: bool = False) -> torch.Tensor:
        windows = [r[-self.block_size :] for r in rows]
        width = max(len(w) for w in windows)
        # Rows are right-padded: each row's tokens take positions 0, 1, ... as if alone, and the
        # cache is told each row's true length.
        lengths = torch.tensor([len(w) for w in windows], device=self.device)
        x = torch.tensor([w + [0] * (width - len(w)) for w in windows], dtype=torch.long, device=self.device)
        cache = KVCache(self.model.cache_layout(self.block_size if keep_cache else width), len(rows))
        logits, _ = self.model(x, cache=cache, lengths=lengths)
        if keep_cache:
            self.cache, self.new = cache, None
            self._last = logits[:, -1].float()
        return logits[:, -1].float()


@dataclass
class Step:
    """One generated token of one sequence."""

    seq: int  # which sequence of the request (its index in the prompts given)
    token: int
    text: str  # the text this token completes ("" while held back: a partial character or stop string)
    probs: torch.Tensor | None  # (V,) the distribution at the sampling temperature, when asked for
    finish: str | None  # None while the sequence goes on; "stop" (a stop string) or "length"


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; the previous mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_steps(
    model: GPT,
    tokenizer: Tokenizer | None,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    use_cache: bool = True,
    with_probs: bool = False,
) -> Iterator[list[Step]]:
    """Generate continuations of several prompts (token ids) together, yielding each step's tokens.

    Every step yields one Step per sequence still going; a sequence's last Step carries its finish
    reason. with_probs adds the full next-token distribution (for showing the top candidates).
    Without a tokenizer only ids come out (text stays empty and stop strings cannot apply).
    """
    params.validate()
    if tokenizer is None and params.stop:
        raise ValueError("stop strings need a tokenizer to read the text")
    base = params.seed if params.seed is not None else int.from_bytes(os.urandom(6), "big")
    device = next(model.parameters()).device
    generators = [torch.Generator(device=device).manual_seed(base + i) for i in range(len(prompts))]
    streams = [TextStream(tokenizer, params.stop) if tokenizer is not None else None for _ in prompts]
    with eval_mode(model):
        decoder = Decoder(model, prompts, use_cache)
        active = list(range(len(prompts)))  # the sequence each decoder row belongs to
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(len(prompts), model.config.vocab_size, dtype=torch.bool, device=device)
            for row, ids in enumerate(prompts):
                seen[row, list(ids)] = True
        for n in range(1, params.max_new_tokens + 1):
            logits = decoder.logits()
            scores = apply_repetition_penalty(logits, seen, params.repetition_penalty) if seen is not None else logits
            tokens = sample_rows(
                scores, [generators[s] for s in active], params.temperature, params.top_k, params.top_p
            )
            probs = probs_from_logits(logits, params.temperature) if with_probs else None
            steps, going = [], []
            chosen = tokens.view(-1).tolist()  # one device-to-host copy per step, not one per row
            for row, seq in enumerate(active):
                token, stream = chosen[row], streams[seq]
                text, stopped = stream.push(token) if stream is not None else ("", False)
                finish = "stop" if stopped else None
                if finish is None and n == params.max_new_tokens:
                    tail, stopped = stream.finish() if stream is not None else ("", False)
                    text, finish = text + tail, "stop" if stopped else "length"
                steps.append(Step(seq, token, text, None if probs is None else probs[row], finish))
                if finish is None:
                    going.append(row)
            yield steps
            if not going:
                return
            decoder.append(chosen)
            if seen is not None:
                seen[torch.arange(len(active), device=device), tokens] = True
            if len(going) < len(active):
                decoder.keep(going)
                active = [active[r] for r in going]
                if seen is not None:
                    seen = seen[going]
