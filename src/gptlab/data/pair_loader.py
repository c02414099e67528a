"""Batches of source -> target pairs, for either architecture, with the loss on the target only.

    encdec: source = the pair's source ids (the encoder reads them);
            inputs = [sep] + target, targets = target + [sep] (the decoder writes the target, then its end)
    gpt:    one sequence "source [sep] target [sep]": inputs = all but its last id, targets = all but its
            first; the loss mask keeps only the target's ids and its end (the source is read, never trained)

Rows are right-padded to the batch's longest; padded positions are out of the loss mask (and, for a
source, out of source_mask). A pair longer than block_size is cut to fit. Pairs are drawn uniformly
with the loader's own generator, whose state_dict resumes the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gptlab.data.batch import Batch, pad_rows
from gptlab.data.pairs import read_pairs
from gptlab.errors import GptlabError


def pair_rows(
    source: np.ndarray, target: np.ndarray, sep: int, block_size: int, arch: str
) -> tuple[list[int], list[int], list[int], int]:
    """(source ids, decoder inputs, next-token targets, index of the first target that counts)
    of one pair for arch; the source list is empty for gpt."""
    src, tgt = [int(i) for i in source], [int(i) for i in target]
    if arch == "encdec":
        seq = [sep] + tgt + [sep]
        return src[:block_size], seq[:-1][:block_size], seq[1:][:block_size], 0
    # A source that fills the window would leave no target to learn from: keep room for one.
    src = src[: block_size - 1]
    seq = (src + [sep] + tgt + [sep])[: block_size + 1]
    return [], seq[:-1], seq[1:], len(src)


def collate(rows: list[tuple[list[int], list[int], list[int], int]]) -> Batch:
    """One Batch from pair_rows() outputs."""
    inputs, real = pad_rows([r[1] for r in rows])
    targets, _ = pad_rows([r[2] for r in rows])
    counted = real.clone()
    for b, (_, _, _, first) in enumerate(rows):
        counted[b, :first] = False
    if rows[0][0]:
        source, source_mask = pad_rows([r[0] for r in rows])
        return Batch(inputs, targets, counted, source, source_mask)
    return Batch(inputs, targets, counted)


class PairLoader:
    """Random batches of pairs from one split of a pairs dataset; state_dict resumes the same order."""

    def __init__(self, dataset: Any, split: str, batch_size: int, block_size: int, seed: int, arch: str = "gpt"):
        self.pairs = read_pairs(dataset.path, dataset.meta, split)
        if len(self.pairs) == 0:
            raise GptlabError(f"the {split} split of {dataset.path} holds no pairs")
        self.sep, self.arch = int(dataset.meta["separator"]), arch
        self.batch_size, self.block_size = batch_size, block_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def rows(self, i: int) -> tuple[list[int], list[int], list[int], int]:
        """pair_rows() of pair i."""
        return pair_rows(*self.pairs.pair(i), self.sep, self.block_size, self.arch)

    def next_batch(self) -> Batch:
        """B pairs drawn uniformly, as a Batch with the loss on the targets only."""
        picks = self.rng.integers(0, len(self.pairs), size=self.batch_size)
        return collate([self.rows(int(i)) for i in picks])

    def state_dict(self) -> dict[str, Any]:
        """The random generator's state (JSON-able)."""
        return dict(self.rng.bit_generator.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state_dict()."""
        self.rng.bit_generator.state = state
