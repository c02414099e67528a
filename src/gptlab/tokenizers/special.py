"""A tokenizer with special tokens appended after its vocabulary (the chat template's markers).

The base tokenizer's ids stay exactly what they were (a pretrained model's embedding rows keep
their meaning); the added tokens take the ids base.vocab_size, base.vocab_size + 1, ... Plain text
never encodes to an added token: only code that means one (a chat template) inserts its id.
Saved as tokenizer.json of kind "special": the base tokenizer's own data plus the added strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gptlab.errors import GptlabError
from gptlab.tokenizers.base import Tokenizer
from gptlab.tokenizers.kinds import BASE_KINDS


class WithSpecialTokens(Tokenizer):
    """base's ids unchanged, then one id per added special token."""

    kind = "special"

    def __init__(self, base: Tokenizer, added: Iterable[str]):
        if isinstance(base, WithSpecialTokens):  # add to the innermost tokenizer: one layer only
            added = [*base.added, *[t for t in added if t not in base.added]]
            base = base.base
        self.base: Tokenizer = base
        self.added: list[str] = list(added)
        if len(set(self.added)) != len(self.added) or not all(self.added):
            raise GptlabError(f"special tokens must be distinct non-empty strings: {self.added}")
        self._first = base.vocab_size
        self._ids = {t: self._first + i for i, t in enumerate(self.added)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WithSpecialTokens:
        """Rebuild from to_dict() output."""
        base = data["base"]
        if not isinstance(base, dict) or base.get("kind") not in BASE_KINDS:  # one layer only: never "special"
            raise ValueError(f"base tokenizer of unknown kind {base.get('kind') if isinstance(base, dict) else base!r}")
        return cls(BASE_KINDS[base["kind"]].from_dict(base), data["added"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base.to_dict(), "added": self.added}

    @property
    def vocab_size(self) -> int:
        return self._first + len(self.added)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {**self.base.special_tokens, **self._ids}

    @property
    def eot_id(self) -> int | None:
        return self.base.eot_id

    def token_id(self, token: str) -> int:
        """The id of one added special token."""
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        return self.base.encode_array(text)

    def decode(self, ids: Iterable[int]) -> str:
        # Runs of base ids decode together (a character split over byte-level tokens stays whole).
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i >= self._first:
                if run:
                    out.append(self.base.decode(run))
                    run = []
                out.append(self.added[i - self._first])
            else:
                run.append(i)
        if run:
            out.append(self.base.decode(run))
        return "".join(out)

    def id_to_piece(self, token_id: int) -> str:
        return self.added[token_id - self._first] if token_id >= self._first else self.base.id_to_piece(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id >= self._first:
            return self.added[token_id - self._first].encode("utf-8")
        return self.base.token_bytes(token_id)
