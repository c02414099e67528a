"""A tokenizer that came from elsewhere as a Hugging Face `tokenizer.json` (an imported checkpoint's),
applied by the `tokenizers` library as it is; gptlab's tokenizer.json keeps it inline."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from gptlab.errors import GptlabError
from gptlab.jsonfile import MiB, read_json_object
from gptlab.tokenizers.base import Tokenizer

MAX_TOKENIZER_BYTES = 256 * MiB  # the largest vocabularies' files are ~35 MB


class HuggingFaceTokenizer(Tokenizer):
    """Ids as the `tokenizers` library gives them, special tokens never made from plain text.

    vocab_size may exceed the file's own count: checkpoints often pad the embedding (to a multiple
    of 64, say); the extra ids decode to nothing.
    """

    kind = "huggingface"

    def __init__(self, spec: dict[str, Any], vocab_size: int = 0, eos_token: str | None = None):
        try:
            self.hf = HFTokenizer.from_str(json.dumps(spec))
        except Exception as exc:  # the library raises its own exception type for a bad file
            raise GptlabError(f"not a valid Hugging Face tokenizer.json: {str(exc).splitlines()[0]}") from None
        self.hf.encode_special_tokens = True  # "<|endoftext|>" typed in a text is text
        self.spec, self.eos_token = spec, eos_token
        self._vocab = max(vocab_size, self.hf.get_vocab_size(with_added_tokens=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HuggingFaceTokenizer:
        """Rebuild from to_dict() output."""
        return cls(data["tokenizer"], int(data.get("vocab_size", 0)), data.get("eos_token"))

    # Pickled for prepare's worker processes: rebuild from the data, since the library's own pickle
    # forgets encode_special_tokens.
    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        rebuilt = HuggingFaceTokenizer.from_dict(state)
        self.__dict__.update(rebuilt.__dict__)

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int = 0) -> HuggingFaceTokenizer:
        """Load a Hugging Face tokenizer.json, with the end-of-text token that the tokenizer_config.json
        beside it names (eos_token), if any."""
        path = Path(path)
        spec = read_json_object(path, MAX_TOKENIZER_BYTES)
        eos = None
        config = path.parent / "tokenizer_config.json"
        if config.is_file():
            eos = read_json_object(config).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
        return cls(spec, vocab_size, eos if isinstance(eos, str) else None)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def encode(self, text: str) -> list[int]:
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        # The library raises a bare Exception for a character it has no token for (a vocabulary without an
        # unknown token) and TypeError for a str that is not Unicode text (a lone surrogate).
        except Exception as exc:
            raise GptlabError(self._cannot_encode(text, exc)) from None

    def _cannot_encode(self, text: str, exc: Exception) -> str:
        """One line naming what in text this tokenizer cannot encode."""
        lone = sorted({c for c in text if "\ud800" <= c <= "\udfff"})
        if lone:
            shown = ", ".join(f"U+{ord(c):04X}" for c in lone[:5])
            return f"the text holds {len(lone)} lone surrogate(s) ({shown}), which is not Unicode text"
        unknown = []
        for c in sorted(set(text)):
            try:
                self.hf.encode(c, add_special_tokens=False)
            except Exception:
                unknown.append(c)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            return f"{len(unknown)} character(s) are not in this tokenizer's vocabulary: {shown}"
        return f"this tokenizer cannot encode the text: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        bad = next((i for i in ids if not 0 <= i < self._vocab), None)
        if bad is not None:
            raise GptlabError(f"token id {bad} is not in this tokenizer's {self._vocab:,} ids")
        return self.hf.decode(ids, skip_special_tokens=False)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}

    @property
    def eot_id(self) -> int | None:
        return self.hf.token_to_id(self.eos_token) if self.eos_token else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self._vocab, "eos_token": self.eos_token, "tokenizer": self.spec}
