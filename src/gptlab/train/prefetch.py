"""Training batches prepared off the critical path, and split across data-parallel ranks.

Which rank trains on which windows: every rank draws the same global stream of batches from a
loader seeded alike, and at each micro-step rank r keeps batch r of the next world_size batches
(the others are drawn and dropped). So W ranks x grad_accum A consume, step by step, exactly the
batches one process with grad_accum A x W consumes, in the same order: the same gradients, the
same losses, and a checkpoint whose loader state means the same thing at any world size.
Drawing windows a rank then drops costs a few random numbers and a memmap slice per window.

A background thread draws ahead (a short queue) while the model computes; batches land in pinned
memory on CUDA so the copy to the GPU can overlap compute (non_blocking). The loader state saved
in a checkpoint is the one after the last batch the trainer took, not after the thread's
look-ahead, so a resume replays exactly what was not yet trained on.

With a shape schedule (train/ramp.py) the thread asks shapes(i) for the shape of micro-step i
(counted from the start of training, so a resume says where it is); every rank draws every batch
of a micro-step at that shape.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from gptlab.data.batch import Batch
from gptlab.data.loader import BatchLoader


class PrefetchingLoader:
    """next_batch() like BatchLoader's, for one rank, with state_dict() matching consumed batches."""

    def __init__(
        self,
        loader: BatchLoader,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        depth: int = 4,
        shapes: Callable[[int], tuple[int, int]] | None = None,
    ):
        self.loader, self.rank, self.world_size, self.pin_memory = loader, rank, world_size, pin_memory
        self.shapes, self._micro_step = shapes, 0  # the next micro-step the thread draws
        self._state = loader.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_state_dict(self, state: dict[str, Any], micro_step: int = 0) -> None:
        """Continue from a saved state_dict() (before the first next_batch), taken after micro_step
        micro-steps (where a shape schedule stands)."""
        assert self._thread is None, "load_state_dict after prefetching started"
        self.loader.load_state_dict(state)
        self._micro_step = micro_step
        self._state = self.loader.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """The loader state after the last batch handed out."""
        return self._state

    def next_batch(self) -> Batch:
        """This rank's batch for the next micro-step."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="gptlab-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue: drain one slot to wake it)."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                shape = self.shapes(self._micro_step) if self.shapes else ()
                self._micro_step += 1
                for r in range(self.world_size):
                    batch = self.loader.next_batch(*shape)
                    if r == self.rank:
                        mine = batch
                self._put((mine.pin_memory() if self.pin_memory else mine, self.loader.state_dict()))
        except BaseException as exc:  # handed to the trainer's thread, raised by next_batch
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
