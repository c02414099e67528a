"""The served model's tokenizer over HTTP, in the form lm-evaluation-harness's `remote` tokenizer
backend (and vLLM's clients) speak:

    GET  /tokenizer_info   {"eos_token", "bos_token", "pad_token", "chat_template", "model_max_length", "vocab_size"}
    POST /tokenize         {"prompt": TEXT}      -> {"tokens": [ids], "count", "max_model_len"}
    POST /detokenize       {"tokens": [ids]}     -> {"prompt": TEXT}

/tokenize reads a special token's exact text (e.g. "<|endoftext|>") as its id: that is how a client
learns the end-of-text id from its name. Completion prompts never do (gptlab's rule for plain text).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gptlab.errors import GptlabError
from gptlab.serve.errors import APIError
from gptlab.tokenizers import Tokenizer

router = APIRouter()
MAX_TOKENIZE_CHARS = 1_000_000  # one request's text: far beyond any context, small enough to answer at once


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # clients add fields such as "model"

    prompt: str = Field(max_length=MAX_TOKENIZE_CHARS)
    add_special_tokens: bool = False  # gptlab's tokenizers add none either way


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    tokens: list[int]


def _tokenizer(request: Request) -> Tokenizer:
    return request.app.state.run.tokenizer


def encode_with_specials(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids for text where a special token's exact text becomes its id and the rest is plain text."""
    specials = tokenizer.special_tokens
    if not specials:
        return tokenizer.encode(text)
    ids: list[int] = []
    pattern = "(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")"
    for i, part in enumerate(re.split(pattern, text)):
        ids += [specials[part]] if i % 2 else tokenizer.encode(part) if part else []
    return ids


def _eos(tokenizer: Tokenizer) -> str | None:
    eot = tokenizer.eot_id
    return next((s for s, i in tokenizer.special_tokens.items() if i == eot), None) if eot is not None else None


@router.get("/tokenizer_info")
def tokenizer_info(request: Request) -> dict[str, Any]:
    tok = _tokenizer(request)
    return {
        "eos_token": _eos(tok),
        "bos_token": None,
        "pad_token": None,
        "chat_template": None,
        "model_max_length": request.app.state.run.config.model.block_size,
        "vocab_size": tok.vocab_size,
        "tokenizer_kind": tok.kind,
    }


@router.post("/tokenize")
def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    try:
        ids = encode_with_specials(_tokenizer(request), body.prompt)
    except GptlabError as exc:
        raise APIError(400, str(exc), "prompt") from None
    return {"tokens": ids, "count": len(ids), "max_model_len": request.app.state.run.config.model.block_size}


@router.post("/detokenize")
def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    tok = _tokenizer(request)
    bad = next((t for t in body.tokens if not 0 <= t < tok.vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary (0..{tok.vocab_size - 1})", "tokens")
    return {"prompt": tok.decode(body.tokens)}
