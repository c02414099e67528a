"""Tokenizer kinds behind one interface (see base.Tokenizer).

A tokenizer spec names what to build: `char` and `bpe` learn from the corpus; `gpt2`,
`cl100k_base` and `o200k_base` are pretrained tiktoken encodings, optionally `NAME:PATH` with the
encoding's file (or directory of files) already on disk; a path to a tokenizer.json, or to a
dataset or run directory holding one, reuses that tokenizer as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.jsonfile import read_json
from gptlab.tokenizers.base import Tokenizer
from gptlab.tokenizers.bpe import BPETokenizer
from gptlab.tokenizers.char import CharTokenizer
from gptlab.tokenizers.huggingface import MAX_TOKENIZER_BYTES, HuggingFaceTokenizer
from gptlab.tokenizers.kinds import BASE_KINDS
from gptlab.tokenizers.pretrained import ENCODINGS, PretrainedTokenizer
from gptlab.tokenizers.special import WithSpecialTokens

# kind name (tokenizer.json's "kind") -> class; a class builds itself with .train(texts) or .from_dict(data).
# special: any of the base kinds with chat tokens added after its vocabulary (gptlab finetune).
KINDS: dict[str, type[Tokenizer]] = {**BASE_KINDS, "special": WithSpecialTokens}
TRAINED = ("char", "bpe")
TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file written by Tokenizer.save."""
    p = Path(path)
    if not p.exists():
        raise GptlabError(f"tokenizer file not found: {p}")
    data = read_json(p, MAX_TOKENIZER_BYTES)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind is None and isinstance(data, dict) and "model" in data and "added_tokens" in data:
        # A Hugging Face tokenizer.json (an exported or downloaded checkpoint's), used as it is.
        return HuggingFaceTokenizer.from_file(p)
    if kind not in KINDS:
        raise GptlabError(f"tokenizer file {p} has unknown kind {kind!r}")
    try:
        return KINDS[kind].from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise GptlabError(f"tokenizer file {p} is corrupt ({type(exc).__name__}: {exc})") from None


def _saved(spec: str) -> Path | None:
    """The tokenizer.json a spec points to (the file, or a directory holding it), if it does."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path / TOKENIZER_FILE
    return path if path.is_file() else None


def check_kind(spec: str) -> None:
    """Refuse an unknown tokenizer spec with the list of known ones."""
    if spec not in TRAINED and _saved(spec) is not None:
        return
    name = spec.partition(":")[0]
    if name not in TRAINED and name not in ENCODINGS:
        raise GptlabError(
            f"unknown tokenizer '{spec}' (known: {', '.join(TRAINED + tuple(ENCODINGS))}; "
            "a pretrained one may take :PATH to its encoding file; or a tokenizer.json path)"
        )
    if name in TRAINED and ":" in spec:
        raise GptlabError(f"tokenizer '{name}' is learned from the corpus and takes no :PATH")


def needs_training(spec: str) -> bool:
    """Whether the spec's tokenizer is learned from the corpus (else it is pretrained)."""
    check_kind(spec)
    return spec in TRAINED


def build_tokenizer(spec: str, texts: Iterable[str] = (), **options: Any) -> Tokenizer:
    """The tokenizer a spec names: trained on texts (char, bpe) or loaded (pretrained or saved;
    texts unread)."""
    check_kind(spec)
    if spec in TRAINED:
        return KINDS[spec].train(texts, **options)  # type: ignore[attr-defined]
    saved = _saved(spec)
    if saved is not None:
        return load_tokenizer(saved)
    name, _, path = spec.partition(":")
    return PretrainedTokenizer(name, path or None)


__all__ = [
    "KINDS",
    "BPETokenizer",
    "CharTokenizer",
    "HuggingFaceTokenizer",
    "PretrainedTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "check_kind",
    "load_tokenizer",
    "needs_training",
]
