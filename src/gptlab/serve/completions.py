"""POST /v1/completions: a request's prompts x n sequences submitted to the model service, answered
whole or streamed as server-sent events. A client that leaves (streaming or not) cancels them."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gptlab.errors import GptlabError
from gptlab.inference.decoding import Event
from gptlab.inference.generate import prompt_ids
from gptlab.inference.probs import top_candidates
from gptlab.inference.score import score_tokens
from gptlab.runs import LoadedRun
from gptlab.serve.errors import ERROR_RESPONSES, read_json
from gptlab.serve.openai import (
    MAX_CHARS_PER_POSITION,
    APIError,
    CompletionRequest,
    choice,
    completion,
    echo_logprobs,
    parse_request,
    sampling_params,
)
from gptlab.serve.service import Generation, ModelService, Overloaded

router = APIRouter()


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
    app = request.app
    req, rows, prompt_tokens = _read(app, await request.body())
    job = _Job(app, req, rows, prompt_tokens)
    request.state.tokens = job.counts
    if req.stream:
        return StreamingResponse(job.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await whole_unless_gone(request, job.whole(), job.gen)


async def whole_unless_gone(request: Request, whole: Awaitable[dict[str, Any]], gen: Generation) -> Response:
    """The whole (non-streamed) response, unless the client leaves first: then its sequences are
    cancelled at the next scheduler step, and nobody reads the 499 (nginx's "client closed request")."""
    collect = asyncio.ensure_future(whole)
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not collect.done():  # the client left: stop generating for it
        gen.cancel()
        collect.cancel()
        return Response(status_code=499)
    return JSONResponse(collect.result())


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


def _read(app: Any, body: bytes) -> tuple[CompletionRequest, list[list[int]], int]:
    """Parse and check a request; its token rows (each prompt n times) and its prompt token count."""
    req = parse_request(read_json(body), app.state.max_tokens_limit)
    if req.model is not None and req.model != app.state.model_id:
        raise APIError(
            404,
            f"model '{req.model}' is not served here (this server has '{app.state.model_id}')",
            "model",
            code="model_not_found",
        )
    run: LoadedRun = app.state.run
    if run.config.model.arch != "gpt":  # completions continue a prompt: a decoder-only model's job
        raise APIError(
            400,
            f"this run is an encoder–decoder (arch={run.config.model.arch}); completions need a "
            "decoder-only GPT run (use `gptlab sample RUN --source TEXT`)",
        )
    block_size = run.config.model.block_size
    encoded = []
    for i, prompt in enumerate(req.prompts()):
        if isinstance(prompt, list):  # token ids, as lm-evaluation-harness sends them
            encoded.append(_checked_ids(run, prompt, i))
            continue
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
        encoded.append(ids)
    rows = [ids for ids in encoded for _ in range(req.n)]  # choice index = prompt index * n + j, as OpenAI
    return req, rows, sum(len(ids) for ids in encoded)


def _checked_ids(run: LoadedRun, ids: list[int], i: int) -> list[int]:
    """A prompt given as token ids, refused unless every id is in the vocabulary and they fit the context."""
    vocab, block_size = run.tokenizer.vocab_size, run.config.model.block_size
    if not ids or any(not 0 <= t < vocab for t in ids):
        raise APIError(400, f"prompt {i}: token ids must be 1 or more, each in 0..{vocab - 1}", "prompt")
    if len(ids) > block_size:
        raise APIError(
            400,
            f"prompt {i} is {len(ids)} tokens; this model reads at most {block_size}",
            "prompt",
            code="context_length_exceeded",
        )
    return ids


def submit(service: ModelService, rows: list[list[int]], req: CompletionRequest) -> Generation:
    """Submit a request's sequences (sequence i draws with seed + i, the engine's rule); 503 when full."""
    params = sampling_params(
        req.max_tokens, req.temperature, req.top_k, req.top_p, req.repetition_penalty, req.stops(), req.seed
    )
    try:
        return service.submit(rows, params, with_probs=req.logprobs is not None)
    except Overloaded as exc:
        raise APIError(
            503, f"the server is busy ({exc}); retry shortly", kind="server_overloaded", headers={"Retry-After": "1"}
        ) from None


class _Job:
    """One request's generation, whole or as a stream of server-sent events."""

    def __init__(self, app: Any, req: CompletionRequest, rows: list[list[int]], prompt_tokens: int):
        self.run: LoadedRun = app.state.run
        self.req, self.rows, self.prompt_tokens = req, rows, prompt_tokens
        texts = [p if isinstance(p, str) else self.run.tokenizer.decode(p) for p in req.prompts()]
        self.prompt_texts = [t for t in texts for _ in range(req.n)]
        self.prompt_chars = [len(t) for t in self.prompt_texts]
        self.service: ModelService = app.state.service
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), app.state.model_id
        self.gen = submit(app.state.service, rows, req)
        self.counts = {"in": prompt_tokens, "out": 0}  # read by the request log

    def _logprobs(self, event: Event) -> dict[str, Any]:
        """OpenAI's logprobs for one token, under the distribution at the request's temperature."""
        tok = self.run.tokenizer
        top = top_candidates(tok, event.probs, self.req.logprobs or 0)
        return {
            "tokens": [tok.id_to_piece(event.token)],
            "token_logprobs": [_log(float(event.probs[event.token]))],
            "top_logprobs": [{c.piece: _log(c.prob) for c in top}],
        }

    async def _echoed(self, row: list[int]) -> dict[str, Any]:
        """The prompt's own logprobs (echo), scored by the model service between two steps."""
        k = self.req.logprobs or 0
        scores = await self.service.call(lambda model: score_tokens(model, row, k))
        return echo_logprobs(self.run.tokenizer, scores, k)

    async def whole(self) -> dict[str, Any]:
        """The whole response object; with echo, each text starts with its prompt (and its logprobs
        with the prompt tokens' own, as lm-evaluation-harness reads loglikelihoods)."""
        echo = self.req.echo
        texts = list(self.prompt_texts) if echo else [""] * len(self.rows)
        finish = ["length"] * len(self.rows)
        logprobs = [
            await self._echoed(row)
            if echo and self.req.logprobs is not None
            else {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            for row in self.rows
        ]
        offsets = list(self.prompt_chars)  # where each sequence's next token starts, in characters
        async for i, event in self.gen:
            texts[i] += event.text
            finish[i] = event.finish or finish[i]
            if event.token is None:
                continue
            self.counts["out"] += 1
            if self.req.logprobs is not None:
                lp, piece_lp = logprobs[i], self._logprobs(event)
                for key in ("tokens", "token_logprobs", "top_logprobs"):
                    lp[key] += piece_lp[key]
                lp["text_offset"].append(offsets[i])
                offsets[i] += len(piece_lp["tokens"][0])
        choices = [
            choice(i, texts[i], finish[i], logprobs[i] if self.req.logprobs is not None else None)
            for i in range(len(self.rows))
        ]
        generated = self.counts["out"]
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": self.prompt_tokens + generated,
        }
        return completion(self.id, self.created, self.model, choices, usage)

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: one chunk per token with text (and each sequence's finish), then [DONE].
        If the client leaves, the response is cancelled here and so is the generation."""
        try:
            async for i, event in self.gen:
                self.counts["out"] += event.token is not None
                with_lp = self.req.logprobs is not None and event.token is not None
                if not (event.text or event.finish or with_lp):
                    continue
                logprobs = self._logprobs(event) if with_lp else None
                yield _sse(
                    completion(self.id, self.created, self.model, [choice(i, event.text, event.finish, logprobs)])
                )
            yield "data: [DONE]\n\n"
        finally:
            self.gen.cancel()  # a no-op once every sequence has finished


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -1e9  # JSON has no -inf
