"""Character tokenizer: one id per distinct character of the corpus, as in the classic tutorials."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gptlab.errors import GptlabError
from gptlab.tokenizers.base import Tokenizer


class CharTokenizer(Tokenizer):
    """Ids are positions in the sorted list of the corpus's characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise GptlabError("cannot build a char tokenizer from empty text")
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """Collect the vocabulary from a stream of texts (never held whole in memory)."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(seen)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Rebuild from to_dict() output."""
        return cls(data["chars"])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in index})
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise GptlabError(
                f"{len(unknown)} character(s) are not in this char tokenizer's vocabulary: {shown}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}
