"""The one model service: everything the HTTP routes ask of the model goes through here.

One thread owns the model. It runs the continuous-batching scheduler (inference/scheduler.py) and,
between two scheduler steps, any exclusive call a route needs (attention maps, embeddings, and
later scoring or a trace). The event loop never runs model code, so /health and cheap routes
never wait behind generation.

    gen = service.submit([ids, ...], SamplingParams(...), with_probs=False)  # Overloaded when full
    async for index, event in gen: ...     # a decoding.Event per token; a sequence's last has a finish
    gen.cancel()                           # frees its rows at the next step (client gone)
    result = await service.call(fn)        # fn(model) alone on the model, between two steps
    result = await service.call(fn, step=50)  # the same with the weights the run kept at step 50
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import torch

from gptlab.inference.decoding import Event, SamplingParams
from gptlab.inference.scheduler import PREFILL_CHUNK, Scheduler, Sequence
from gptlab.model import Model
from gptlab.runs import LoadedRun, load_kept_model
from gptlab.serve.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("gptlab.serve")
# Events are handed to the event loops at most every FLUSH_EVERY seconds (and at once when a sequence
# ends or the batch runs dry). The loop's per-event Python work takes turns with the model thread's on
# the GIL, so waking it after every step of a small model (~1 ms a step) cost one streaming client ~20%
# of its tokens/s (benchmarks/engine.py); a step longer than this flushes every step, as before.
FLUSH_EVERY = 0.004
KEPT_MODELS = 2  # models of kept steps (the run's history) held in memory: the page's slider visits a few


class Overloaded(Exception):
    """The waiting queue is full: the request should be retried later (HTTP 503)."""


class Generation:
    """Sequences submitted together (one request's prompts x n), as seen by a route: an async stream
    of (index, Event), index being the sequence's place in the submitted list."""

    def __init__(self, service: ModelService):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.service = service
        self.seqs: list[Sequence] = []

    def sink(self, event: Event) -> None:
        """Where the model thread sends its sequences' events (delivered after each step)."""
        self.service._post(self, (event.seq, event))

    def deliver(self, items: list[tuple[int, Event]]) -> None:
        """On the route's event loop: hand over events."""
        for item in items:
            self._queue.put_nowait(item)

    def cancel(self) -> None:
        """Stop generating (the client left); the rows are freed at the next scheduler step."""
        for seq in self.seqs:
            seq.cancel()
        self.service.wake()

    async def __aiter__(self) -> AsyncIterator[tuple[int, Event]]:
        going = len(self.seqs)
        while going:
            index, event = await self._queue.get()
            going -= event.finish is not None
            yield index, event


class ModelService:
    """A LoadedRun behind a scheduler thread: submit() sequences, call() one-off model work."""

    def __init__(
        self,
        run: LoadedRun,
        max_batch: int = 16,
        max_waiting: int = 256,
        prefill_chunk: int = PREFILL_CHUNK,
        metrics: Metrics | None = None,
    ):
        if max_batch < 1 or max_waiting < 0 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be >= 1 and max_waiting >= 0")
        self.run, self.max_batch, self.max_waiting = run, max_batch, max_waiting
        self.metrics = metrics or Metrics()
        run.model.eval()  # the service owns the model from now on: no dropout, ever
        self.scheduler = Scheduler(run.model, max_batch, prefill_chunk, on_token=self._count_token)
        self._cond = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._calls: deque[tuple[Callable[[Any], Any], int | None, concurrent.futures.Future]] = deque()
        self._kept: dict[int, Model] = {}  # step -> the model with its kept weights, least recently used first
        self._stopping = False
        # Events per Generation since the last flush, handed to the event loops together: one wake-up
        # of a loop per flush, not one per token.
        self._outbox: dict[Generation, list[tuple[int, Event]]] = {}
        self._flushed = 0.0
        self._thread = threading.Thread(target=self._loop, name="gptlab-model", daemon=True)
        self._thread.start()

    # --- for the routes ---

    def submit(self, prompts: list[list[int]], params: SamplingParams, with_probs: bool = False) -> Generation:
        """Queue one request's sequences (each prompt's ids, of which the last block_size are read;
        sequence i draws with params.seed + i), all or none; call it on the event loop that will consume
        them. Raises Overloaded when the waiting queue is full, gptlab.errors.GptlabError for settings
        that make no sense."""
        params.validate()
        gen = Generation(self)
        gen.seqs = [Sequence(ids, params, i, self.run.tokenizer, gen.sink, with_probs) for i, ids in enumerate(prompts)]
        with self._cond:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            free = max(0, self.max_batch - self.running)
            if self.waiting + len(prompts) > self.max_waiting + free:
                raise Overloaded(f"{self.waiting} sequences are already waiting for the model")
            self._incoming.extend(gen.seqs)
            self._cond.notify()
        self.metrics.tokens_in.inc(sum(len(ids) for ids in prompts))
        return gen

    async def call(self, fn: Callable[[torch.nn.Module], T], step: int | None = None) -> T:
        """Run fn(model) in the model thread between two scheduler steps, with gradients off. With step,
        fn gets the run's model with the weights kept at that step of its history instead (loaded on first
        use, the last KEPT_MODELS kept in memory; gptlab.errors.GptlabError for a step not kept)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model service has stopped")
            self._calls.append((fn, step, future))
            self._cond.notify()
        return await asyncio.wrap_future(future)

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return len(self.scheduler.running)

    @property
    def waiting(self) -> int:
        """Sequences queued for a free row."""
        # Read from the routes' threads while the model thread runs: len() of a deque is atomic.
        return len(self.scheduler.waiting) + len(self._incoming)

    def wake(self) -> None:
        """Have the model thread look at its queues now (a cancellation, a new request)."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the model thread (after its current step)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- the model thread ---

    def _post(self, gen: Generation, item: tuple[int, Event]) -> None:
        self._outbox.setdefault(gen, []).append(item)

    def _flush(self, force: bool = False) -> None:
        """Hand the events of the steps since the last flush to their event loops (see FLUSH_EVERY)."""
        now = time.perf_counter()
        done = any(item[1].finish is not None for items in self._outbox.values() for item in items)
        if not (force or done or now - self._flushed >= FLUSH_EVERY or not self.scheduler.has_work()):
            return
        self._flushed = now
        for gen, items in self._outbox.items():
            try:
                gen._loop.call_soon_threadsafe(gen.deliver, items)
            except RuntimeError:  # its event loop is closed: nobody is listening any more
                for seq in gen.seqs:
                    seq.cancel()
        self._outbox = {}

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._incoming or self._calls or self.scheduler.has_work()):
                    self._cond.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
                incoming = list(self._incoming)
                self._incoming.clear()
            for seq in incoming:
                self.scheduler.add(seq)
            for fn, step, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        with torch.no_grad():
                            future.set_result(fn(self._model_at(step)))
                    except BaseException as exc:  # handed to the awaiting route, which reports it
                        future.set_exception(exc)
            try:
                self.scheduler.step()
            except Exception:  # a bug must not leave every client hanging: end what was running
                log.exception("scheduler step failed; ending the running sequences")
                for seq in list(self.scheduler.running):
                    self.scheduler.finish(seq, "error")
            self._flush()
            self.metrics.running.set(len(self.scheduler.running))
            self.metrics.waiting.set(self.waiting)
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting) + list(self._incoming):
            seq.sink(Event(seq.index, None, "", None, "cancelled"))
        self._flush(force=True)
        for _, _, future in self._calls:
            future.cancel()

    def _model_at(self, step: int | None) -> torch.nn.Module:
        """The served model, or (step) the one with the weights kept at that step, from a small cache."""
        if step is None:
            return self.run.model
        model = self._kept.pop(step, None)
        if model is None:
            device = next(self.run.model.parameters()).device
            model = load_kept_model(self.run.path, self.run.config, step, device)
        self._kept[step] = model  # now the most recently used
        while len(self._kept) > KEPT_MODELS:
            del self._kept[next(iter(self._kept))]
        return model

    def _count_token(self, seq: Sequence, event: Event) -> None:
        now = time.perf_counter()
        if seq.last_token is None:
            self.metrics.ttft.observe(now - seq.submitted)
        else:
            self.metrics.token_latency.observe(now - seq.last_token)
        seq.last_token = now
        self.metrics.tokens_out.inc()
