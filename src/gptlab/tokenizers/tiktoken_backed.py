"""Shared behaviour of the byte-level kinds whose ids are applied by a `tiktoken.Encoding`.

Both the corpus-trained `bpe` kind and the pretrained encodings (`gpt2`, `cl100k_base`, ...)
hand encoding and decoding to tiktoken's BPE core, which runs several times faster than a
Python loop and never turns special-token strings found in plain text into special ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tiktoken

from gptlab.errors import GptlabError
from gptlab.tokenizers.base import Tokenizer


class TiktokenBacked(Tokenizer):
    """A tokenizer whose work is done by `self.encoding` (set by the subclass)."""

    encoding: tiktoken.Encoding
    eot_token: str = "<|endoftext|>"

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: "<|endoftext|>" typed in a document is just text, never the special id.
        try:
            return self.encoding.encode_ordinary(text)
        except UnicodeEncodeError as exc:
            raise GptlabError(f"text holds a character that is not valid Unicode text ({exc.reason})") from None

    def encode_array(self, text: str) -> np.ndarray:
        # No special token allowed nor refused: special-token strings are encoded as plain text,
        # as encode_ordinary does, straight into an array.
        try:
            return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        except UnicodeEncodeError as exc:
            raise GptlabError(f"text holds a character that is not valid Unicode text ({exc.reason})") from None

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    @property
    def special_tokens(self) -> dict[str, int]:
        return {s: self.encoding.encode_single_token(s) for s in sorted(self.encoding.special_tokens_set)}

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(self.eot_token)

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self.encoding.decode_single_token_bytes(token_id)
        except KeyError:
            raise GptlabError(f"id {token_id} is not in this {self.kind} vocabulary of {self.vocab_size}") from None

    def id_to_piece(self, token_id: int) -> str:
        # A piece can be part of a character (Chinese takes 3 bytes); show its bytes as \\xNN.
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
