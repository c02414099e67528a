"""The decoding core: how each sequence chooses its next token and when it ends, the same for every
caller (`gptlab sample`, the model service, chat, the encoder–decoder, post-training samples, RL rollouts).

    SamplingParams         one request's settings: how to choose each token, when to stop
    SequenceState          one sequence: its context, its generator (the request's seed + its index),
                           repetition mask, text stream with stop strings, token count and finish
    step(states, logits)   a batch of rows' next-token logits (B, V) -> each sequence's Event

Whoever computes the logits (inference/scheduler.py for a GPT, inference/seq2seq.py for an
encoder–decoder) hands them here; nothing else chooses a token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gptlab.errors import GptlabError
from gptlab.inference.sampling import apply_repetition_penalty, probs_from_logits, sample_rows
from gptlab.inference.text import TextStream
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
    seed: int | None = None  # sequence i of a request draws with seed + i; None: a fresh random seed

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


def fresh_seed() -> int:
    """The seed of a request that gave none: 48 random bits."""
    return int.from_bytes(os.urandom(6), "big")


@dataclass
class Event:
    """One step of one sequence: the token it chose, or its end without one (token None)."""

    seq: int  # the sequence's index in its request
    token: int | None
    text: str  # the text this token completes ("" while held back: a partial character or stop string)
    probs: torch.Tensor | None  # (V,) the distribution at the sequence's temperature, when asked for
    finish: str | None  # None while it goes on; "stop" (stop string or end token), "length", "cancelled", "error"


class SequenceState:
    """One sequence being generated: everything that decides its next token and its end.

    Sequence `index` of a request draws with the request's seed + index (a fresh seed when none is
    given), from a generator of its own: its tokens never depend on what else shares the batch.
    """

    def __init__(
        self,
        ids: Sequence[int],
        params: SamplingParams,
        index: int = 0,
        tokenizer: Tokenizer | None = None,
        with_probs: bool = False,
        end: int | None = None,
        limit: int | None = None,
    ):
        params.validate()
        if not ids:
            raise ValueError("a sequence needs at least one token of context")
        if tokenizer is None and params.stop:
            raise ValueError("stop strings need a tokenizer to read the text")
        self.ids = list(ids)  # the context (what a repetition penalty looks at), growing with each token
        self.params, self.index, self.with_probs, self.end = params, index, with_probs, end
        self.limit = params.max_new_tokens if limit is None else min(limit, params.max_new_tokens)
        seed = params.seed if params.seed is not None else fresh_seed()
        self.generator = torch.Generator().manual_seed(seed + index)  # sampling runs on a CPU copy of the logits
        self.stream = TextStream(tokenizer, params.stop) if tokenizer is not None else None
        self.seen: torch.Tensor | None = None  # tokens in the context, for the repetition penalty (built at first use)
        self.generated = 0
        self.finish: str | None = None

    def seen_mask(self, vocab_size: int) -> torch.Tensor:
        """(V,) True where a token occurs in the context."""
        if self.seen is None:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool)
            self.seen[self.ids] = True
        return self.seen

    def push(self, token: int, probs: torch.Tensor | None) -> Event:
        """Take the chosen token: its text, and whether the sequence ends with it."""
        self.generated += 1
        text, stopped = "", False
        if token == self.end:
            # The sequence's end token: no text of its own; whatever was held back comes out.
            if self.stream is not None:
                text = self.stream.finish()[0]
            finish: str | None = "stop"
        else:
            if self.stream is not None:
                text, stopped = self.stream.push(token)
            finish = "stop" if stopped else None
            if finish is None and self.generated >= self.limit:
                tail, stopped = self.stream.finish() if self.stream is not None else ("", False)
                text, finish = text + tail, "stop" if stopped else "length"
        if finish is None:
            self.ids.append(token)
            if self.seen is not None:
                self.seen[token] = True
        self.finish = finish
        return Event(self.index, token, text, probs if self.with_probs else None, finish)


def step(states: Sequence[SequenceState], logits: torch.Tensor) -> list[Event]:
    """Each sequence's next token from its row of logits (B, V), drawn with its own settings and
    generator: the one place a token is chosen. Rows with the same settings are filtered together
    (each row's numbers are the same as alone: the operations work row by row)."""
    logits = logits.float().cpu()
    tokens: list[int] = [0] * len(states)
    probs: list[torch.Tensor | None] = [None] * len(states)
    groups: dict[tuple, list[int]] = {}
    for row, state in enumerate(states):
        p = state.params
        groups.setdefault((p.temperature, p.top_k, p.top_p, p.repetition_penalty), []).append(row)
    for (temperature, top_k, top_p, penalty), rows in groups.items():
        scores = logits if len(rows) == len(states) else logits[rows]
        dist = probs_from_logits(scores, temperature) if any(states[r].with_probs for r in rows) else None
        if penalty != 1.0:
            seen = torch.stack([states[r].seen_mask(logits.size(-1)) for r in rows])
            scores = apply_repetition_penalty(scores, seen, penalty)
        chosen = sample_rows(scores, [states[r].generator for r in rows], temperature, top_k, top_p)
        for i, (row, token) in enumerate(zip(rows, chosen.tolist())):
            tokens[row] = token
            probs[row] = dist[i] if dist is not None else None
    return [state.push(token, p) for state, token, p in zip(states, tokens, probs)]
