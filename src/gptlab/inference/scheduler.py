"""Continuous batching, the one decoding loop of a GPT: sequences join the running batch at step
boundaries and leave when done. `gptlab sample` runs it in its own thread (inference/engine.py),
the model service in its model thread (serve/service.py): the same tokens for the same seed.

Each scheduler step does, in order: drop cancelled sequences, admit waiting ones into free slots,
feed prompt chunks up to one chunk's worth of tokens (so a long prompt never stalls the others for
long), then one decode step for every sequence that has a single token to feed, all in one forward
pass. Every sequence has its own length, position, sampling settings and random generator; its
token is chosen by the decoding core (inference/decoding.py).

Determinism: a sequence's tokens depend only on its own ids, settings and seed. Attention is
computed over each row's own keys (inference/kv_cache.py SlotCache); prompt chunks are fed one
sequence at a time; and decode steps compute every matrix product so that a row's result does not
depend on how many rows share it (inference/products.py), so a sequence alone and the same sequence
among others get the same logits to the last bit.

Without the cache (use_cache=False, the reference the cache must match), every token resets the
sequence's slot and feeds its whole window again, in one piece: the numbers of a cache-free forward.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

import torch

from gptlab.inference import decoding
from gptlab.inference.decoding import Event, SamplingParams, SequenceState
from gptlab.inference.kv_cache import SlotCache
from gptlab.inference.products import row_invariant_products
from gptlab.model import Model
from gptlab.tokenizers import Tokenizer

PREFILL_CHUNK = 128  # prompt tokens fed per step; chunk boundaries change the numbers, so every caller shares it


class Sequence(SequenceState):
    """A sequence handed to the scheduler: its state, where its events go, and its place in the cache."""

    def __init__(
        self,
        ids: list[int],
        params: SamplingParams,
        index: int,
        tokenizer: Tokenizer | None,
        sink: Callable[[Event], None],
        with_probs: bool = False,
        end: int | None = None,
    ):
        super().__init__(ids, params, index, tokenizer, with_probs, end)
        self.sink = sink
        self.pending: list[int] = []  # tokens still to feed the model (set when it joins the batch)
        self.slot = -1  # its slot in the cache while it runs
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
        model: Model,
        max_batch: int,
        prefill_chunk: int = PREFILL_CHUNK,
        on_token: Callable[[Sequence, Event], None] | None = None,
        use_cache: bool = True,
    ):
        self.model = model
        self.cache = SlotCache(model.cache_layout(), max_batch)
        self.device = self.cache.device
        # The reference path feeds a whole window at once, as a cache-free forward would.
        self.prefill_chunk = prefill_chunk if use_cache else self.cache.capacity
        self.use_cache = use_cache
        self.free = list(range(max_batch))
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.on_token = on_token  # metrics hook
        # The decode steps' row-invariant products, made at the first one (prefill needs none).
        self._products: contextlib.AbstractContextManager | None = None
        self._turn = 0  # round robin over sequences with a prompt to prefill

    def has_work(self) -> bool:
        """Whether a step would do anything."""
        return bool(self.running or self.waiting)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; it joins the batch when a slot is free."""
        if seq.limit == 0:
            seq.sink(Event(seq.index, None, "", None, "length"))
            return
        self.waiting.append(seq)

    @torch.no_grad()
    def step(self) -> None:
        """One scheduler step: cancellations, admissions, one prefill chunk, one decode step."""
        if torch.is_autocast_enabled(self.device.type):
            # A caller's autocast (RL rollouts inside a bf16 training step) is off here: the engine decodes
            # in the weights' own precision, as `gptlab sample` does (float32 products and cache on the CPU).
            with torch.autocast(self.device.type, enabled=False):
                self._step()
        else:
            self._step()

    def _step(self) -> None:
        for seq in [s for s in self.running if s.cancelled]:
            self._leave(seq, Event(seq.index, None, "", None, "cancelled"))
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
            seq.sink(Event(seq.index, None, "", None, "cancelled"))
        while self.waiting and self.free:
            seq = self.waiting.popleft()
            seq.slot = self.free.pop(0)
            seq.pending = seq.ids[-self.cache.capacity :]
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
        decoding_now = [s for s in self.running if len(s.pending) == 1]
        if decoding_now:
            self._decode(decoding_now)

    def _prefill_chunk(self, seq: Sequence) -> None:
        chunk, seq.pending = seq.pending[: self.prefill_chunk], seq.pending[self.prefill_chunk :]
        logits = self._forward([seq.slot], [chunk])
        if not seq.pending:  # the whole prompt is in: its last logits choose the first token
            self._chosen([seq], logits)

    def _decode(self, seqs: list[Sequence]) -> None:
        if self._products is None:
            self._products = row_invariant_products(self.model) or contextlib.nullcontext()
        with self._products:
            logits = self._forward([s.slot for s in seqs], [s.pending for s in seqs])
        self._chosen(seqs, logits)

    def _forward(self, slots: list[int], rows: list[list[int]]) -> torch.Tensor:
        """Logits (B, V) for the token after each row's tokens (rows of equal length, each its slot's)."""
        self.cache.select(slots)
        x = torch.tensor(rows, dtype=torch.long, device=self.device)
        logits, _ = self.model(x, cache=self.cache)
        return logits[:, -1]

    def _chosen(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Each sequence's next token from its logits (the decoding core), sent out; the next feed set up."""
        for seq, event in zip(seqs, decoding.step(seqs, logits)):
            if self.on_token is not None:
                self.on_token(seq, event)
            if event.finish is not None:
                self._leave(seq, event)
                continue
            seq.sink(event)
            seq.pending = seq.ids[-1:]  # the token just chosen
            if not self.use_cache or (self.cache.room(seq.slot) < 1 and not self.cache.can_slide):
                # Recompute the window from position 0: the reference path does so every token; with
                # learned positions a full window cannot slide (every kept token would move).
                self.cache.reset(seq.slot)
                seq.pending = seq.ids[-self.cache.capacity :]

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a running sequence now, with this finish reason."""
        self._leave(seq, Event(seq.index, None, "", None, reason))

    def _leave(self, seq: Sequence, event: Event) -> None:
        self.running.remove(seq)
        self.free.append(seq.slot)
        self.free.sort()
        seq.slot = -1
        seq.sink(event)
