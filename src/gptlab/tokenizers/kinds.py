"""The tokenizer kinds that stand alone, by the name tokenizer.json's "kind" field gives them.

Kept apart from the package's full KINDS so that the one kind built on another (special.py, which
wraps any of these) can rebuild its base without importing the package that lists it.
"""

from __future__ import annotations

from gptlab.tokenizers.base import Tokenizer
from gptlab.tokenizers.bpe import BPETokenizer
from gptlab.tokenizers.char import CharTokenizer
from gptlab.tokenizers.huggingface import HuggingFaceTokenizer
from gptlab.tokenizers.pretrained import PretrainedTokenizer

# huggingface: an imported checkpoint's tokenizer.json, kept as it is (gptlab import).
BASE_KINDS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "bpe": BPETokenizer,
    "tiktoken": PretrainedTokenizer,
    "huggingface": HuggingFaceTokenizer,
}
