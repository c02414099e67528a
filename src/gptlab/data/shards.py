"""Token shards: a split's ids written incrementally into files of at most `shard_tokens` ids.

A split that fits in one shard is the single file `SPLIT.bin`; a larger one is `SPLIT-00000.bin`,
`SPLIT-00001.bin`, ... meta.json lists them in order, and readers only ever go by that list.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

import numpy as np


class ShardWriter:
    """Appends id arrays to the current shard, opening the next one when it is full."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.names: list[str] = []
        self.tokens = 0
        self.digest = hashlib.sha256()  # of the split's whole id stream, whatever the sharding
        self._file: BinaryIO | None = None
        self._room = 0
        self._open_next()  # every split has a file, even an empty one

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self.names.append(f"{self.split}-{len(self.names):05d}.bin")
        self._file = open(self.directory / self.names[-1], "wb")
        self._room = self.shard_tokens

    def write(self, ids: np.ndarray) -> None:
        """Append ids (any integer dtype), splitting them across shards as they fill."""
        ids = np.asarray(ids, dtype=self.dtype)
        while len(ids):
            if self._room == 0:
                self._open_next()
            assert self._file is not None  # opened by __init__, replaced by _open_next
            part, ids = ids[: self._room], ids[self._room :]
            part.tofile(self._file)
            self.digest.update(part.data)  # the ids' bytes, no copy
            self._room -= len(part)
            self.tokens += len(part)

    def close(self) -> list[str]:
        """Close the last shard and give each its final name; returns the names in order."""
        assert self._file is not None
        self._file.close()
        if len(self.names) == 1:
            (self.directory / self.names[0]).rename(self.directory / f"{self.split}.bin")
            self.names = [f"{self.split}.bin"]
        return self.names
