"""Encoding batches of text into token ids, in worker processes, results kept in order.

Each batch is a list of (text, starts_document) pairs of one split; a document that starts after
another one in its split gets the separator ids (the end-of-text token) in front. At most a few
batches per worker are in flight, so memory stays bounded however large the corpus is.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from gptlab.tokenizers import KINDS, Tokenizer

Batch = list[tuple[str, bool]]

# The tokenizer and settings of this worker process: encode_batch's first three arguments.
_worker: dict[str, tuple[Tokenizer, list[int], np.dtype]] = {}


def encode_batch(tokenizer: Tokenizer, separator: list[int], dtype: np.dtype, batch: Batch) -> np.ndarray:
    """The ids of a batch's texts, concatenated, with separators before the documents that need one."""
    sep = np.asarray(separator, dtype=dtype)
    parts: list[np.ndarray] = []
    for text, separated in batch:
        if separated:
            parts.append(sep)
        parts.append(tokenizer.encode_array(text).astype(dtype, copy=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _init_worker(tokenizer_data: dict[str, Any], separator: list[int], dtype: str) -> None:
    _worker["args"] = (KINDS[tokenizer_data["kind"]].from_dict(tokenizer_data), separator, np.dtype(dtype))


def _encode_in_worker(item: tuple[str, Batch]) -> tuple[str, np.ndarray]:
    split, batch = item
    return split, encode_batch(*_worker["args"], batch)


class OrderedEncoder:
    """submit() (split, batch) pairs; results() yields (split, ids) in submission order."""

    def __init__(self, tokenizer: Tokenizer, separator: list[int], dtype: np.dtype, workers: int):
        self.args = (tokenizer, separator, dtype)
        self.pending: deque[Future | tuple[str, np.ndarray]] = deque()
        self.max_pending = 2 * workers
        self.pool = None
        if workers > 1:
            # spawn: a fresh interpreter per worker, never a fork of a process whose tokenizer
            # library may already run threads.
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(tokenizer.to_dict(), separator, dtype.name),
            )

    def submit(self, split: str, batch: Batch) -> Iterator[tuple[str, np.ndarray]]:
        """Queue one batch; yields the results that had to be finished to make room for it."""
        if self.pool is None:
            self.pending.append((split, encode_batch(*self.args, batch)))
        else:
            self.pending.append(self.pool.submit(_encode_in_worker, (split, batch)))
        while len(self.pending) > self.max_pending:
            yield self._pop()

    def drain(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every result not yet yielded."""
        while self.pending:
            yield self._pop()

    def _pop(self) -> tuple[str, np.ndarray]:
        head = self.pending.popleft()
        return head.result() if isinstance(head, Future) else head

    def close(self) -> None:
        """Stop the workers (pending work is dropped)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
