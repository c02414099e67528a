"""Byte-level BPE trained on the corpus: any Unicode text round-trips exactly, Chinese included.

Training is done by the `tokenizers` library (its BpeTrainer, fed a stream of texts, so the corpus
is never one string in memory). The learned vocabulary is then applied by tiktoken's BPE core
(ids are merge ranks: a token learned earlier has a lower id and is merged first), which encodes
several times faster than `tokenizers` on these CPUs. tokenizer.json keeps the vocabulary as
byte-level strings in id order, in the GPT-2 notation ("Ġthe" is " the").
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from gptlab.errors import GptlabError
from gptlab.tokenizers.tiktoken_backed import TiktokenBacked

DEFAULT_VOCAB_SIZE = 2048  # enough merges for common words of a few-MB corpus, small enough for CPU models
MIN_VOCAB_SIZE = 257  # the 256 single bytes plus the end-of-text token
EOT = "<|endoftext|>"
# The GPT-2 pre-tokenizer split (words, numbers, punctuation, spaces): the same split the
# `tokenizers` ByteLevel pre-tokenizer makes during training, in tiktoken's faster spelling.
PATTERN = r50k_pat_str


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """The GPT-2 byte-level notation: every byte as one visible character.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) move to
    U+0100 onwards in byte order, so a space is written "Ġ" and a newline "Ċ".
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    moved = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(0x100 + i) for i, b in enumerate(moved)})
    return mapping


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    """Inverse of byte_to_char."""
    return {c: b for b, c in byte_to_char().items()}


class BPETokenizer(TiktokenBacked):
    """Ids 0..V-2 are byte sequences in the order BPE learned them; id V-1 is <|endoftext|>."""

    kind = "bpe"

    def __init__(self, pieces: list[str]):
        to_byte = char_to_byte()
        try:
            ranks = {bytes(to_byte[c] for c in piece): rank for rank, piece in enumerate(pieces)}
        except KeyError as exc:
            raise GptlabError(f"bpe tokenizer has a piece with a character outside the byte alphabet: {exc}") from None
        if len(ranks) != len(pieces) or len(pieces) < MIN_VOCAB_SIZE - 1:
            raise GptlabError("bpe tokenizer vocabulary is corrupt (duplicate pieces or missing bytes)")
        self.pieces = pieces
        self.encoding = tiktoken.Encoding(
            "gptlab-bpe", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(pieces)}
        )

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> BPETokenizer:
        """Learn up to vocab_size tokens (end-of-text included) from a stream of texts."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise GptlabError(
                f"--vocab-size {vocab_size} is too small for byte-level BPE "
                f"(at least {MIN_VOCAB_SIZE}: 256 bytes and the end-of-text token)"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        hf.train_from_iterator(texts, trainer)
        # The trainer gives the special token id 0, then the byte alphabet, then merges in order.
        by_id = sorted(hf.get_vocab().items(), key=lambda item: item[1])
        return cls([piece for piece, _ in by_id if piece != EOT])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        """Rebuild from to_dict() output."""
        return cls(data["pieces"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "special_tokens": {EOT: len(self.pieces)}, "pieces": self.pieces}
