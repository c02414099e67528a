"""Loader: a prepared dataset, read through numpy memmaps, served as random batches.

A batch is B windows of T+1 consecutive tokens at random offsets: inputs are the first T, targets
the last T. A window never spans two token files (shards): each is drawn inside one shard, the shard
chosen with probability proportional to the windows it holds, so every window is equally likely.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.data.batch import Batch
from gptlab.errors import GptlabError
from gptlab.tokenizers import Tokenizer, load_tokenizer


class Dataset:
    """A prepared dataset directory: meta.json, tokenizer.json and the token files of each split."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise GptlabError(f"{self.path} is not a prepared dataset (no meta.json); run `gptlab prepare` first")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
            self.dtype = np.dtype(self.meta["dtype"])
            self.splits: dict[str, dict[str, Any]] = self.meta["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise GptlabError(f"{meta_path} is corrupt: {exc}") from None
        self.tokenizer: Tokenizer = load_tokenizer(self.path / "tokenizer.json")

    @property
    def kind(self) -> str:
        """ "text" (token streams) or "pairs" (source -> target, data/pairs.py)."""
        return self.meta.get("kind", "text")

    def replaced(self) -> bool:
        """Whether the directory no longer holds the dataset read at construction (another prepare
        wrote it since: meta.json, and with it the dataset id, changed or is gone)."""
        try:
            now = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True
        return now != self.meta

    def shards(self, split: str) -> list[np.ndarray]:
        """Memory-mapped token arrays of a split (never loaded whole)."""
        if self.kind != "text":
            raise GptlabError(
                f"{self.path} is a dataset of {self.kind}, not of text; this command needs one prepared from text"
            )
        if split not in self.splits:
            raise GptlabError(f"dataset {self.path} has no split '{split}' (has: {', '.join(self.splits)})")
        arrays: list[np.ndarray] = []
        for name in self.splits[split]["files"]:
            file = self.path / name
            if not file.is_file():
                raise GptlabError(f"dataset {self.path} is missing its token file {name}")
            if file.stat().st_size:
                arrays.append(np.memmap(file, dtype=self.dtype, mode="r"))
        return arrays


class BatchLoader:
    """Random batches (inputs, targets) from one split; its state_dict resumes the same order."""

    def __init__(self, dataset: Dataset, split: str, batch_size: int, block_size: int, seed: int):
        self.batch_size, self.block_size = batch_size, block_size
        self.shards = dataset.shards(split)
        # Windows start at 0..len-T-1 so that T+1 tokens fit.
        self.starts = np.array([max(0, len(s) - block_size) for s in self.shards], dtype=np.int64)
        if self.starts.sum() == 0:
            longest = max((len(s) for s in self.shards), default=0)
            raise GptlabError(
                f"the {split} split of {dataset.path} has {longest} tokens, fewer than "
                f"block_size+1={block_size + 1}; use a smaller block_size or more text"
            )
        self.weights = self.starts / self.starts.sum()
        self._shorter: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # T -> starts, weights (few Ts: train/ramp.py)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _starts(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows of T+1 tokens each shard holds, and each shard's share of them (shorter windows
        fit in more places: a shape schedule's early windows are drawn from everywhere they fit)."""
        if T == self.block_size:
            return self.starts, self.weights
        if T not in self._shorter:
            starts = np.array([max(0, len(s) - T) for s in self.shards], dtype=np.int64)
            self._shorter[T] = starts, starts / starts.sum()
        return self._shorter[T]

    def next_batch(self, batch_size: int | None = None, block_size: int | None = None) -> Batch:
        """B windows as int64 tensors of shape (B, T): inputs and next-token targets. batch_size and
        block_size, where given, draw a smaller batch or shorter windows (train/ramp.py) from the same
        random stream; at most the loader's own."""
        B, T = batch_size or self.batch_size, block_size or self.block_size
        assert B <= self.batch_size and T <= self.block_size, "a batch larger than the loader's"
        starts, weights = self._starts(T)
        shard_ids = (
            self.rng.choice(len(self.shards), size=B, p=weights)
            if len(self.shards) > 1
            else np.zeros(B, dtype=np.int64)
        )
        offsets = self.rng.integers(0, starts[shard_ids])
        windows = np.stack([self.shards[s][o : o + T + 1] for s, o in zip(shard_ids, offsets)])
        data = torch.from_numpy(windows.astype(np.int64))
        return Batch(data[:, :-1], data[:, 1:])

    def state_dict(self) -> dict[str, Any]:
        """The random generator's state (JSON-able), enough to continue the same batch sequence."""
        return dict(self.rng.bit_generator.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state_dict()."""
        self.rng.bit_generator.state = state


def batch_loader(dataset: Dataset, split: str, batch_size: int, block_size: int, seed: int, arch: str = "gpt"):
    """The loader a dataset and architecture train with: windows of text (BatchLoader), or pairs with
    the loss on the target (data/pair_loader.py), which an encoder–decoder needs."""
    if dataset.kind == "pairs":
        from gptlab.data.pair_loader import PairLoader

        return PairLoader(dataset, split, batch_size, block_size, seed, arch)
    if arch == "encdec":
        raise GptlabError(
            f"arch=encdec trains on source -> target pairs, and {dataset.path} is a text dataset; "
            "prepare one with `gptlab prepare FILE.jsonl --pairs`"
        )
    return BatchLoader(dataset, split, batch_size, block_size, seed)
