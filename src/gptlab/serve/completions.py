"""POST /v1/completions: OpenAI's legacy completions, plus top_k and repetition_penalty.

A request's prompts x n sequences go to the model service and come back whole or streamed as server-sent
events; a client that leaves (streaming or not) cancels them. OpenAI features gptlab does not have
(suffix, best_of, logit_bias, presence and frequency penalties) are refused unless set to their do-nothing
values. A prompt may be text or token ids; `echo` returns the prompt before the completion, with its
tokens' logprobs when asked (what lm-evaluation-harness scores loglikelihoods with).
"""

from __future__ import annotations

import codecs
import math
from typing import Any, cast

from fastapi import APIRouter, Request
from pydantic import Field

from gptlab.errors import GptlabError
from gptlab.inference.decoding import Event
from gptlab.inference.generate import prompt_ids
from gptlab.inference.probs import top_candidates
from gptlab.inference.score import TokenScore, score_tokens
from gptlab.runs import LoadedRun
from gptlab.serve.errors import ERROR_RESPONSES, APIError
from gptlab.serve.requests import (
    MAX_CHARS_PER_POSITION,
    MAX_SEQUENCES,
    Job,
    SamplingRequest,
    answer,
    parse_body,
    sampling_params,
)
from gptlab.tokenizers import Tokenizer

MAX_PROMPTS = 16  # prompts in one request
router = APIRouter()


class CompletionRequest(SamplingRequest):
    """POST /v1/completions body (OpenAI's legacy completions, plus top_k and repetition_penalty)."""

    prompt: str | list[str] | list[int] | list[list[int]] = ""  # text(s), or token ids (one list per prompt)
    max_tokens: int = Field(16, ge=0)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, ge=1e-3, le=100)
    logprobs: int | None = Field(None, ge=0, le=5)
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
        # Texts, or id lists: pydantic's union makes every item the kind of the first.
        return list(cast("list[str] | list[list[int]]", self.prompt))

    def new_tokens(self, run: LoadedRun) -> int:
        return self.max_tokens


@router.post(
    "/v1/completions",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    },
)
async def completions(request: Request) -> Any:
    """OpenAI's legacy completions (plus top_k and repetition_penalty), whole or streamed."""
    run: LoadedRun = request.app.state.run
    req = parse_body(await request.body(), CompletionRequest, request.app)
    prompts = _prompt_ids(run, req)
    params = sampling_params(
        req.max_tokens, req.temperature, req.top_k, req.top_p, req.repetition_penalty, req.stops(), req.seed
    )
    rows = [ids for ids in prompts for _ in range(req.n)]  # choice index = prompt index * n + j, as OpenAI
    job = Job(request, rows, params, sum(map(len, prompts)), with_probs=req.logprobs is not None)
    return await answer(
        request, job, req.stream, lambda: _whole(job, req, run, prompts), lambda: _chunks(job, req, run)
    )


def _prompt_ids(run: LoadedRun, req: CompletionRequest) -> list[list[int]]:
    """Refuse what this route cannot do; each prompt's ids (text encoded, ids checked) otherwise."""
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
    prompts = req.prompts()
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"prompt must be a string, token ids, or a list of 1 to {MAX_PROMPTS} of them", "prompt")
    if len(prompts) * req.n > MAX_SEQUENCES:
        raise APIError(400, f"{len(prompts)} prompts x n={req.n} is more than {MAX_SEQUENCES} sequences", "n")
    if run.config.model.arch != "gpt":  # completions continue a prompt: a decoder-only model's job
        raise APIError(
            400,
            f"this run is an encoder–decoder (arch={run.config.model.arch}); completions need a "
            "decoder-only GPT run (use `gptlab sample RUN --source TEXT`)",
        )
    return [_ids(run, prompt, i) for i, prompt in enumerate(prompts)]


def _ids(run: LoadedRun, prompt: str | list[int], i: int) -> list[int]:
    """Prompt i's ids: text encoded, or token ids (as lm-evaluation-harness sends them) checked against
    the vocabulary; either refused when it does not fit the context."""
    vocab, block_size = run.tokenizer.vocab_size, run.config.model.block_size
    if isinstance(prompt, list):
        if not prompt or any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"prompt {i}: token ids must be 1 or more, each in 0..{vocab - 1}", "prompt")
        ids = prompt
    else:
        if len(prompt) > MAX_CHARS_PER_POSITION * block_size:
            raise APIError(
                400,
                f"prompt {i} is {len(prompt):,} characters; this model reads at most {block_size} tokens",
                "prompt",
                code="context_length_exceeded",
            )
        try:
            ids = prompt_ids(run.tokenizer, prompt)
        except GptlabError as exc:
            raise APIError(400, f"prompt {i}: {exc}", "prompt") from None
    if len(ids) > block_size:
        raise APIError(
            400,
            f"prompt {i} is {len(ids)} tokens; this model reads at most {block_size}",
            "prompt",
            code="context_length_exceeded",
        )
    return ids


async def _whole(job: Job, req: CompletionRequest, run: LoadedRun, prompts: list[list[int]]) -> dict[str, Any]:
    """The whole response object; with echo, each text starts with its prompt (and its logprobs with the
    prompt tokens' own, as lm-evaluation-harness reads loglikelihoods)."""
    tok, n, k = run.tokenizer, req.n, req.logprobs
    texts = [p if isinstance(p, str) else tok.decode(p) for p in req.prompts()]
    offsets = [len(texts[i // n]) for i in range(job.rows)]  # where each sequence's next token starts, in characters
    logprobs: list[dict[str, Any]] = [_no_logprobs() for _ in range(job.rows)]
    if req.echo and k is not None:
        # Each prompt scored once, however many sequences continue it, between two scheduler steps.
        scored = await job.service.call(lambda model: [score_tokens(model, ids, k) for ids in prompts])
        echoed = [echo_logprobs(tok, scores, k) for scores in scored]
        logprobs = [{key: list(values) for key, values in echoed[i // n].items()} for i in range(job.rows)]

    def on_token(i: int, event: Event) -> None:
        if k is None:
            return
        piece = _token_logprobs(tok, event, k)
        for key in ("tokens", "token_logprobs", "top_logprobs"):
            logprobs[i][key] += piece[key]
        logprobs[i]["text_offset"].append(offsets[i])
        offsets[i] += len(piece["tokens"][0])

    generated, finish = await job.collect(on_token)
    choices = [
        _choice(
            i, (texts[i // n] if req.echo else "") + generated[i], finish[i], logprobs[i] if k is not None else None
        )
        for i in range(job.rows)
    ]
    return job.reply("text_completion", choices, usage=True)


async def _chunks(job: Job, req: CompletionRequest, run: LoadedRun) -> Any:
    """One chunk per token with text (and each sequence's finish); with logprobs, one per token."""
    async for i, event in job:
        with_lp = req.logprobs is not None and event.token is not None
        if event.text or event.finish or with_lp:
            logprobs = _token_logprobs(run.tokenizer, event, req.logprobs or 0) if with_lp else None
            yield job.reply("text_completion", [_choice(i, event.text, event.finish, logprobs)])


def _choice(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    """One entry of a response's "choices"."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _no_logprobs() -> dict[str, Any]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _token_logprobs(tokenizer: Tokenizer, event: Event, k: int) -> dict[str, Any]:
    """OpenAI's logprobs for one generated token, under the distribution at the request's temperature."""
    token, probs = event.token, event.probs
    assert token is not None and probs is not None  # a token's event, of a job asked for probs
    top = top_candidates(tokenizer, probs, k)
    return {
        "tokens": [tokenizer.id_to_piece(token)],
        "token_logprobs": [_log(float(probs[token]))],
        "top_logprobs": [{c.piece: _log(c.prob) for c in top}],
    }


def echo_logprobs(tokenizer: Tokenizer, scores: list[TokenScore], k: int) -> dict[str, Any]:
    """OpenAI's logprobs for an echoed prompt: each token's piece, its logprob (null for the first,
    which nothing predicts), its top-k alternatives, and where it starts in the echoed text."""
    return {
        "tokens": [tokenizer.id_to_piece(s.id) for s in scores],
        "token_logprobs": [s.logprob for s in scores],
        "top_logprobs": [
            None if s.logprob is None else {tokenizer.id_to_piece(i): lp for i, lp in s.top[:k]} for s in scores
        ],
        "text_offset": text_offsets(tokenizer, [s.id for s in scores]),
    }


def text_offsets(tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    """Where each token starts in the text of ids, in characters: len(decode(ids[:i])) for every i.

    One pass over the tokens' bytes through an incremental UTF-8 decoder: a character split across
    tokens counts as the replacement character that decoding the prefix shows, until it completes.
    A tokenizer whose text is not its tokens' bytes joined (an imported Hugging Face one may strip or
    add spaces) is asked for each prefix instead.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, pieces, chars = [], [], 0
    for t in ids:
        held = decoder.getstate()[0]  # at most 3 bytes of an unfinished character: what the prefix ends with
        offsets.append(chars + len(held.decode("utf-8", errors="replace")))
        pieces.append(decoder.decode(tokenizer.token_bytes(t)))
        chars += len(pieces[-1])
    if "".join(pieces) + decoder.decode(b"", final=True) != tokenizer.decode(ids):
        return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    return offsets


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -1e9  # JSON has no -inf
