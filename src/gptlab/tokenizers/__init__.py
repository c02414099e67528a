"""Tokenizer kinds behind one interface (see base.Tokenizer)."""

from gptlab.errors import GptlabError
from gptlab.tokenizers.base import Tokenizer, load_tokenizer
from gptlab.tokenizers.char import CharTokenizer

# kind name -> class; a class builds itself with .train(texts) or .from_dict(data).
KINDS: dict[str, type[Tokenizer]] = {"char": CharTokenizer}


def check_kind(kind: str) -> None:
    """Refuse an unknown tokenizer kind with the list of known ones."""
    if kind not in KINDS:
        raise GptlabError(f"unknown tokenizer '{kind}' (known: {', '.join(KINDS)})")


__all__ = ["KINDS", "CharTokenizer", "Tokenizer", "check_kind", "load_tokenizer"]
