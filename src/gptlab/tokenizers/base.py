"""The one small interface every tokenizer kind implements (text <-> ids).

A tokenizer is saved as one JSON file (`tokenizer.json`) beside a dataset or run, whose "kind"
field says which class loads it (the package's KINDS and load_tokenizer). This package never
imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.fileio import atomic_write_json


class Tokenizer(ABC):
    """Maps text to token ids and back."""

    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids (special tokens included)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids for text; special tokens never come out of plain text."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer, as JSON-able data (with a "kind" key)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """Rebuild from to_dict() output (KeyError, TypeError or ValueError when it is malformed)."""

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token strings and their ids (none by default)."""
        return {}

    @property
    def eot_id(self) -> int | None:
        """Id of the end-of-text token placed between documents, if this kind has one."""
        return None

    def id_to_piece(self, token_id: int) -> str:
        """The text one id stands for on its own (may be a partial character for byte-level kinds)."""
        return self.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one id stands for (byte-level kinds may hold part of a character)."""
        return self.decode([token_id]).encode("utf-8")

    def encode_array(self, text: str) -> np.ndarray:
        """Ids for text as an integer array (kinds backed by a fast library skip Python ints)."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically."""
        atomic_write_json(path, self.to_dict())
