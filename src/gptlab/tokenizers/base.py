"""The one small interface every tokenizer kind implements (text <-> ids), and its file format.

A tokenizer is saved as one JSON file (`tokenizer.json`) beside a dataset or run, whose "kind"
field says which class loads it. This package never imports torch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import GptlabError
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


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file written by Tokenizer.save."""
    from gptlab.tokenizers import KINDS

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptlabError(f"tokenizer file not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptlabError(f"tokenizer file {p} is not valid JSON: {exc}") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind is None and isinstance(data, dict) and "model" in data and "added_tokens" in data:
        # A Hugging Face tokenizer.json (an exported or downloaded checkpoint's), used as it is.
        from gptlab.tokenizers.huggingface import HuggingFaceTokenizer

        return HuggingFaceTokenizer.from_file(p)
    if kind not in KINDS:
        raise GptlabError(f"tokenizer file {p} has unknown kind {kind!r}")
    try:
        return KINDS[kind].from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise GptlabError(f"tokenizer file {p} is corrupt ({type(exc).__name__}: {exc})") from None
