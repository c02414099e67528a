"""Conversations and preference pairs as token ids, split into training and held-out records, and
served as padded batches with a loss mask, in shuffled epochs that a checkpoint can resume.

A batch row is one record: inputs ids[:-1], targets ids[1:], loss_mask true where the target is
something the assistant says; rows are right-padded to the batch's longest (padding is masked).
A preference batch holds B pairs as 2B rows: the B chosen answers, then the B rejected ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptlab.data.batch import Batch, pad_rows
from gptlab.data.corpora import SkipReport
from gptlab.errors import GptlabError
from gptlab.posttrain.records import PreferencePair
from gptlab.posttrain.template import ChatTemplate, Message


@dataclass
class Example:
    """One record's ids and, per id, whether the model is trained to write it."""

    ids: list[int]
    trained: list[bool]


def encode_example(
    template: ChatTemplate, messages: list[Message], block_size: int, report: SkipReport
) -> Example | None:
    """A conversation as an Example, or None (counted in report) when it cannot be one."""
    try:
        ids, trained = template.encode(messages)
    except GptlabError:  # a char tokenizer meets a character its corpus never had
        report.skip("record with characters outside the tokenizer's vocabulary")
        return None
    if len(ids) > block_size + 1:
        report.skip(f"record longer than the context window (more than block_size+1={block_size + 1} tokens)")
        return None
    return Example(ids, trained)


def encode_pair(
    template: ChatTemplate, pair: PreferencePair, block_size: int, report: SkipReport
) -> tuple[Example, Example] | None:
    """A preference pair as (chosen, rejected) Examples, or None (counted in report)."""
    scratch = SkipReport()
    both = [
        encode_example(template, [Message("user", pair.prompt), Message("assistant", answer)], block_size, scratch)
        for answer in (pair.chosen, pair.rejected)
    ]
    if None in both:
        report.skip(next(iter(scratch.reasons)))
        return None
    return both[0], both[1]  # type: ignore[return-value]


def held_out(n: int, count: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and held-out records: count records drawn with the seed (at most a
    tenth of them, at least one), the same every time."""
    if n < 2:
        raise GptlabError(f"{n} usable record(s): at least 2 are needed (one to train on, one held out)")
    count = max(1, min(count, n // 10 or 1))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[count:].tolist()), sorted(order[:count].tolist())


def collate(rows: list[Example]) -> Batch:
    """Right-padded inputs, targets and loss mask (B, L-1) for examples of length <= L."""
    ids, _ = pad_rows([r.ids for r in rows])
    trained, _ = pad_rows([r.trained for r in rows], fill=False, dtype=torch.bool)  # padding is never trained
    return Batch(ids[:, :-1], ids[:, 1:], trained[:, 1:])


def pair_batch(pairs: list[tuple[Example, Example]]) -> Batch:
    """B pairs as 2B rows: chosen answers first, then the rejected ones."""
    return collate([c for c, _ in pairs] + [r for _, r in pairs])


class RecordLoader:
    """Batches of records in shuffled epochs (each epoch's order comes from the seed and the epoch
    number, so the state is two integers). Items are Examples, or pairs of them for DPO."""

    def __init__(self, items: list[Any], batch_size: int, seed: int, pairs: bool = False):
        self.items, self.batch_size, self.seed, self.pairs = items, batch_size, seed, pairs
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))

    def next_batch(self) -> Batch:
        """The next batch_size records as a batch (an epoch's end moves on into the next epoch)."""
        chosen = self.next_items()
        return pair_batch(chosen) if self.pairs else collate(chosen)

    def next_items(self) -> list[Any]:
        """The next batch_size items themselves (RL's prompts, which are answered before they are a batch)."""
        chosen: list[Any] = []
        while len(chosen) < self.batch_size:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            chosen.append(self.items[self._order[self.pos]])
            self.pos += 1
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands (JSON-able)."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state_dict()."""
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle()
