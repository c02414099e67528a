"""The OpenAI-compatible completions request, its checks, and the response objects.

Unknown fields are refused (a typo such as `max_token` would otherwise be ignored silently), and so
are OpenAI features gptlab does not have (suffix, best_of, logit_bias, presence and frequency
penalties), unless set to their do-nothing values. Types are strict: "5" is not a number. A prompt
may be text or token ids; `echo` returns the prompt before the completion, with its tokens'
logprobs when asked (what lm-evaluation-harness scores loglikelihoods with).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptlab.errors import GptlabError
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.score import TokenScore
from gptlab.tokenizers import Tokenizer

MAX_PROMPTS = 16  # prompts in one request
# A prompt longer than this many characters per context position is surely too long: refuse it
# before spending time encoding it (no tokenizer makes 100 characters into one token).
MAX_CHARS_PER_POSITION = 100
MAX_SEQUENCES = 32  # prompts x n: the rows of one request's batch
MAX_STOP = 4  # as OpenAI
MAX_TEMPERATURE = 2.0  # as OpenAI; the page's routes share it
MAX_SEED = 2**62  # seeds are in [0, MAX_SEED): torch generators take at most 64 bits


class APIError(Exception):
    """A request the server refuses: becomes an OpenAI-style JSON error with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers  # e.g. Retry-After on a 503

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class CompletionRequest(BaseModel):
    """POST /v1/completions body (OpenAI's legacy completions, plus top_k and repetition_penalty)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]] = ""  # text(s), or token ids (one list per prompt)
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, ge=1e-3, le=100)
    n: int = Field(1, ge=1, le=MAX_SEQUENCES)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    logprobs: int | None = Field(None, ge=0, le=5)
    stream: bool = False
    user: str | None = None  # accepted and ignored, as OpenAI clients send it
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: each a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    def stops(self) -> list[str]:
        """The stop string(s) as a list."""
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


def parse_request(data: Any, max_tokens_limit: int) -> CompletionRequest:
    """Validate a decoded JSON body; raise APIError (400) naming the first bad field."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        req = CompletionRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"unknown field '{param}'", param) from None
        where = ".".join(str(p) for p in err["loc"])  # e.g. prompt.list[str].0: which alternative failed
        raise APIError(400, f"{where}: {err['msg']}", param) from None
    if req.echo and req.stream:
        raise APIError(400, "'echo' is not supported with 'stream' (ask for the whole response)", "echo")
    unsupported = {
        "suffix": req.suffix is not None,
        "logit_bias": bool(req.logit_bias),
        "presence_penalty": req.presence_penalty != 0,
        "frequency_penalty": req.frequency_penalty != 0,
        "best_of": req.best_of not in (None, req.n),
    }
    for name, used in unsupported.items():
        if used:
            raise APIError(400, f"'{name}' is not supported by this server", name)
    if req.max_tokens > max_tokens_limit:
        raise APIError(
            400, f"max_tokens={req.max_tokens} is more than this server allows ({max_tokens_limit})", "max_tokens"
        )
    if not math.isfinite(req.temperature) or not math.isfinite(req.top_p):
        raise APIError(400, "temperature and top_p must be finite numbers", "temperature")
    sampling_params(
        req.max_tokens, req.temperature, req.top_k, req.top_p, req.repetition_penalty, req.stops(), req.seed
    )
    prompts, stops = req.prompts(), req.stops()
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"prompt must be a string, token ids, or a list of 1 to {MAX_PROMPTS} of them", "prompt")
    if len(prompts) * req.n > MAX_SEQUENCES:
        raise APIError(400, f"{len(prompts)} prompts x n={req.n} is more than {MAX_SEQUENCES} sequences", "n")
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise APIError(400, f"stop must be up to {MAX_STOP} non-empty strings", "stop")
    return req


def sampling_params(
    max_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
) -> SamplingParams:
    """The engine's settings for a request, checked by the engine's own rules (the one validation
    /v1 and /api share); APIError 400 naming the field otherwise."""
    if seed is not None and not 0 <= seed < MAX_SEED:  # room for seed + i of a request's sequences
        raise APIError(400, f"seed={seed} must be in [0, 2**62)", "seed")
    params = SamplingParams(max_tokens, temperature, top_k, top_p, repetition_penalty, tuple(stop or ()), seed)
    try:
        params.validate()
    except GptlabError as exc:
        # The engine's messages start with the field's name ("temperature=1e-40 must be ...").
        field = str(exc).split("=")[0].split()[0]
        raise APIError(400, str(exc), {"max_new_tokens": "max_tokens"}.get(field, field)) from None
    return params


def echo_logprobs(tokenizer: Tokenizer, scores: list[TokenScore], k: int) -> dict[str, Any]:
    """OpenAI's logprobs for an echoed prompt: each token's piece, its logprob (null for the first,
    which nothing predicts), its top-k alternatives, and where it starts in the echoed text."""
    pieces = [tokenizer.id_to_piece(s.id) for s in scores]
    offsets = [len(tokenizer.decode([s.id for s in scores[:i]])) for i in range(len(scores))]
    return {
        "tokens": pieces,
        "token_logprobs": [s.logprob for s in scores],
        "top_logprobs": [
            None if s.logprob is None else {tokenizer.id_to_piece(i): lp for i, lp in s.top[:k]} for s in scores
        ],
        "text_offset": offsets,
    }


def choice(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    """One entry of a response's "choices"."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion(
    cid: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """A text_completion object (a whole response, or one streamed chunk without usage)."""
    body = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body
