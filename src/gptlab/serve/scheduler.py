"""Continuous batching: sequences join the running batch at step boundaries and leave when done.

Each scheduler step does, in order: drop cancelled sequences, admit waiting ones into free slots,
feed prompt chunks up to one chunk's worth of tokens (so a long prompt never stalls the others for
long), then one decode step for every sequence that has a single token to feed, all in one forward
pass. Every
sequence has its own length, position, sampling settings and random generator.

Determinism: a sequence's tokens depend only on its own ids, settings and seed. Attention is
computed row by row (inference/kv_cache.py SlotCache); prompt chunks are fed one sequence at a time; and the
decode batch is padded to at least MIN_DECODE_ROWS rows, because the CPU matrix library picks a
different kernel (another summation order, other float32 results) for fewer rows than that, so a
sequence alone and the same sequence among others would otherwise get different logits.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptlab.inference.engine import SamplingParams
from gptlab.inference.kv_cache import SlotCache
from gptlab.inference.sampling import apply_repetition_penalty, probs_from_logits, sample_rows
from gptlab.inference.text import TextStream
from gptlab.tokenizers import Tokenizer

MIN_DECODE_ROWS = 16  # from this many rows up, float32 matrix products give each row the same result


@dataclass
class Event:
    """One generated token of one sequence (token None: the sequence ended without a token)."""

    token: int | None
    text: str  # the text this token completes ("" while held back)
    probs: torch.Tensor | None  # (V,) the distribution at the sequence's temperature, when asked for
    finish: str | None  # None while the sequence goes on; "stop", "length", "cancelled" or "error"


class Sequence:
    """One prompt being continued: its ids, settings, generator and place in the cache."""

    def __init__(
        self,
        ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer | None,
        vocab_size: int,
        block_size: int,
        sink: Callable[[Event], None],
        with_probs: bool = False,
    ):
        params.validate()
        if not ids:
            raise ValueError("a sequence needs at least one token of context")
        self.ids, self.params, self.with_probs, self.sink = list(ids), params, with_probs, sink
        self.prompt_tokens = len(ids)
        self.pending = self.ids[-block_size:]  # tokens still to feed the model
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(6), "big")
        self.generator = torch.Generator().manual_seed(seed)  # sampling runs on the CPU copy of the logits
        self.stream = TextStream(tokenizer, params.stop) if tokenizer is not None else None
        self.seen: torch.Tensor | None = None  # tokens already in the context, for the repetition penalty
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool)
            self.seen[self.ids] = True
        self.generated = 0
        self.slot: int | None = None
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.last_token: float | None = None  # when its latest token came out (for the latency metrics)

    def cancel(self) -> None:
        """Stop generating for this sequence at the next step boundary (safe from any thread)."""
        self.cancelled = True


class Scheduler:
    """The running batch over one model; every method runs in the one thread that owns the model."""

    def __init__(
        self,
        model: torch.nn.Module,
        max_batch: int,
        prefill_chunk: int = 128,
        on_token: Callable[[Sequence, Event], None] | None = None,
    ):
        self.model = model
        self.cache = SlotCache(model.cache_layout(), max_batch)
        self.device = self.cache.device
        self.prefill_chunk = prefill_chunk
        self.free = list(range(max_batch))
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.on_token = on_token  # metrics hook
        self._turn = 0  # round robin over sequences with a prompt to prefill

    def has_work(self) -> bool:
        """Whether a step would do anything."""
        return bool(self.running or self.waiting)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; it joins the batch when a slot is free."""
        if seq.params.max_new_tokens == 0:
            seq.sink(Event(None, "", None, "length"))
            return
        self.waiting.append(seq)

    @torch.no_grad()
    def step(self) -> None:
        """One scheduler step: cancellations, admissions, one prefill chunk, one decode step."""
        for seq in [s for s in self.running if s.cancelled]:
            self._leave(seq, Event(None, "", None, "cancelled"))
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
            seq.sink(Event(None, "", None, "cancelled"))
        while self.waiting and self.free:
            seq = self.waiting.popleft()
            seq.slot = self.free.pop(0)
            self.cache.reset(seq.slot)
            self.running.append(seq)
        # Prompt chunks, each sequence's fed alone, until a chunk's worth of tokens this step (at
        # least one chunk): many short prompts start together, one long prompt does not stall
        # the decoding ones. Chunk boundaries depend on the prompt only, never on the budget.
        prefilling = [s for s in self.running if len(s.pending) > 1]
        budget = self.prefill_chunk
        for i in range(len(prefilling)):
            if budget <= 0:
                break
            seq = prefilling[(self._turn + i) % len(prefilling)]
            budget -= min(len(seq.pending), self.prefill_chunk)
            self._prefill_chunk(seq)
        self._turn += 1
        decoding = [s for s in self.running if len(s.pending) == 1]
        if decoding:
            self._decode(decoding)

    def _prefill_chunk(self, seq: Sequence) -> None:
        chunk, seq.pending = seq.pending[: self.prefill_chunk], seq.pending[self.prefill_chunk :]
        logits = self._forward([seq.slot], [chunk], 1)
        if not seq.pending:  # the whole prompt is in: its last logits choose the first token
            self._sampled(seq, logits[0])

    def _decode(self, seqs: list[Sequence]) -> None:
        pads = max(0, MIN_DECODE_ROWS - len(seqs))
        logits = self._forward(
            [s.slot for s in seqs] + [None] * pads, [s.pending for s in seqs] + [[0]] * pads, len(seqs)
        )
        for i, seq in enumerate(seqs):
            self._sampled(seq, logits[i])

    def _forward(self, slots: list[int | None], rows: list[list[int]], real: int) -> torch.Tensor:
        """Logits (real, V) on the CPU for the token after each of the first `real` rows' tokens (rows of
        equal length; the rest are padding, whose logits nobody reads)."""
        self.cache.select(slots)
        x = torch.tensor(rows, dtype=torch.long, device=self.device)
        logits, _ = self.model(x, cache=self.cache)
        return logits[:real, -1].float().cpu()

    def _sampled(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Choose seq's next token from its logits (V,), send it out, and set up the next feed."""
        p = seq.params
        scores = logits[None]
        if seq.seen is not None:
            scores = apply_repetition_penalty(scores, seq.seen[None], p.repetition_penalty)
        token = int(sample_rows(scores, [seq.generator], p.temperature, p.top_k, p.top_p)[0])
        probs = probs_from_logits(logits, p.temperature) if seq.with_probs else None
        seq.generated += 1
        text, stopped = seq.stream.push(token) if seq.stream is not None else ("", False)
        finish = "stop" if stopped else None
        if finish is None and seq.generated == p.max_new_tokens:
            tail, stopped = seq.stream.finish() if seq.stream is not None else ("", False)
            text, finish = text + tail, "stop" if stopped else "length"
        event = Event(token, text, probs, finish)
        if self.on_token is not None:
            self.on_token(seq, event)
        if finish is not None:
            self._leave(seq, event)
            return
        seq.sink(event)
        seq.ids.append(token)
        if seq.seen is not None:
            seq.seen[token] = True
        seq.pending = [token]
        if self.cache.room(seq.slot) < 1 and not self.cache.can_slide:
            # Learned positions cannot slide: recompute the last block_size tokens from position 0.
            self.cache.reset(seq.slot)
            seq.pending = seq.ids[-self.cache.capacity :]

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a running sequence now, with this finish reason."""
        self._leave(seq, Event(None, "", None, reason))

    def _leave(self, seq: Sequence, event: Event) -> None:
        self.running.remove(seq)
        self.free.append(seq.slot)
        self.free.sort()
        seq.slot = None
        seq.sink(event)
