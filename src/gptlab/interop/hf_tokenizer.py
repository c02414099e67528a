"""gptlab's tokenizers as a Hugging Face `tokenizer.json` (built and saved by the `tokenizers` library).

char                 WordLevel: each character its own word (the pre-tokenizer isolates every
                     character), joined back without spaces; a character outside the vocabulary
                     is an error, as in gptlab
bpe, gpt2, cl100k..  byte-level BPE: the same split pattern, vocabulary and merge order as
                     tiktoken applies them (ids are merge ranks), end-of-text as a special token
huggingface          the imported file, as it came
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from gptlab.data.prepare import CHAR_SEPARATOR
from gptlab.errors import GptlabError
from gptlab.tokenizers import CharTokenizer, HuggingFaceTokenizer, PretrainedTokenizer, Tokenizer
from gptlab.tokenizers.bpe import byte_to_char
from gptlab.tokenizers.tiktoken_backed import TiktokenBacked


def to_hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    """The tokenizers-library twin of a gptlab tokenizer: same ids for the same text."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        return HFTokenizer.from_str(json.dumps(tokenizer.spec))
    if isinstance(tokenizer, CharTokenizer):
        return _char(tokenizer)
    if isinstance(tokenizer, TiktokenBacked):
        return _byte_level(tokenizer)
    raise GptlabError(
        f"cannot export a tokenizer of kind {tokenizer.kind!r} (a run with chat tokens, from "
        "`gptlab finetune` or `align`, is not exportable yet): export its base run"
    )


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The id that ends a text in an export: the tokenizer's end-of-text token, or, for the char
    tokenizer, which has none, the newline its datasets separate documents with (a blank line).
    Tools such as lm-eval need one (as the prefix of a text scored from its start)."""
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    if isinstance(tokenizer, CharTokenizer) and CHAR_SEPARATOR[0] in tokenizer.chars:
        return tokenizer.chars.index(CHAR_SEPARATOR[0])
    return None


def eos_token(tokenizer: Tokenizer) -> str | None:
    """The text of the token that ends a text (end_of_text_id), where the tokenizer has one."""
    eot = end_of_text_id(tokenizer)
    if eot is None:
        return None
    # An imported tokenizer may end text with an ordinary token (not in special_tokens): its own text.
    return next((s for s, i in tokenizer.special_tokens.items() if i == eot), None) or tokenizer.decode([eot])


def _char(tokenizer: CharTokenizer) -> HFTokenizer:
    hf = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token="<unk>"))
    # Every character its own piece (a newline too); Fuse joins pieces with no space.
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return hf


def _byte_level(tokenizer: TiktokenBacked) -> HFTokenizer:
    encoding = tokenizer.encoding
    ranks: dict[bytes, int] = encoding._mergeable_ranks  # tiktoken keeps no public accessor for them
    notation = byte_to_char()

    def text(piece: bytes) -> str:
        return "".join(notation[b] for b in piece)

    # Merges in rank order: a token is made from any two lower-ranked tokens that spell it, so the
    # library merges the pair whose result tiktoken would (the lowest rank) at every step.
    merges = []
    for piece, rank in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [
            (piece[:i], piece[i:])
            for i in range(1, len(piece))
            if ranks.get(piece[:i], rank) < rank and ranks.get(piece[i:], rank) < rank
        ]
        merges += sorted(splits, key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    vocab = {text(p): r for p, r in ranks.items()} | dict(specials)  # specials keep their ids (gaps and all)
    model = models.BPE(
        vocab, [(text(a), text(b)) for a, b in merges], ignore_merges=True
    )  # a whole piece already in the vocabulary is one token, as in tiktoken
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(encoding._pat_str), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
    for s, i in specials:
        if hf.token_to_id(s) != i:
            raise GptlabError(f"special token {s} got id {hf.token_to_id(s)} in the tokenizers library, not {i}")
    return hf


def tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """tokenizer_config.json: AutoTokenizer loads tokenizer.json as it is, adding nothing to the ids."""
    eos = eos_token(tokenizer)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        # As in gptlab, "<|endoftext|>" typed in a text is text, never the special id.
        "split_special_tokens": True,
    }
    if eos is not None:
        config |= {"eos_token": eos, "bos_token": eos, "pad_token": eos}
    if isinstance(tokenizer, PretrainedTokenizer):
        config["gptlab_encoding"] = tokenizer.name  # a pretrained encoding is named: gpt2, cl100k_base, ...
    return config
