"""The one request layer under the HTTP routes: every route that needs the model is parse -> submit ->
format, and each of those is written here once.

    req = await parse_request(request, ChatRequest)                   # 400 naming the field, 404 another model
    job = Job(request, rows, sampling_params(...))                    # 503 with Retry-After when the queue is full
    return await answer(request, job, req.stream, whole, chunks)      # JSON, or server-sent events ending in [DONE]

The page's /api routes share the sampler's checks (sampling_params) and the submit-or-503 (Job); their
refusals read {"detail": ...} (serve/errors.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptlab.errors import GptlabError
from gptlab.inference.decoding import MAX_STOP_CHARS, Event, SamplingParams
from gptlab.runs import LoadedRun
from gptlab.serve.errors import APIError, read_json
from gptlab.serve.service import Overloaded

# A prompt longer than this many characters per context position is surely too long: refuse it
# before spending time encoding it (no tokenizer makes 100 characters into one token).
MAX_CHARS_PER_POSITION = 100
MAX_SEQUENCES = 32  # prompts x n: the rows of one request's batch
MAX_STOP = 4  # as OpenAI
MAX_TEMPERATURE = 2.0  # as OpenAI; the page's routes share it


def refuse_overlong_text(text: str, block_size: int, what: str) -> None:
    """A 400 for a page text surely too long for the context (MAX_CHARS_PER_POSITION), before encoding it."""
    limit = MAX_CHARS_PER_POSITION * block_size
    if len(text) > limit:
        raise APIError(400, f"{what} is {len(text):,} characters; at most {limit:,} are accepted")


# Seeds are in [0, MAX_SEED): torch generators take at most 64 bits, and sequence i draws with seed + i.
MAX_SEED = 2**62

R = TypeVar("R", bound="SamplingRequest")
T = TypeVar("T")


class SamplingRequest(BaseModel):
    """What every OpenAI-style body shares: the model asked for, the sampler's settings, how many
    sequences, where to stop, whether to stream. Unknown fields are refused (a typo such as
    `max_token` would otherwise be ignored silently); types are strict ("5" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_SEQUENCES)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    stream: bool = False
    user: str | None = None  # accepted and ignored, as OpenAI clients send it

    def stops(self) -> list[str]:
        """The stop string(s) as a list."""
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def new_tokens(self, run: LoadedRun) -> int:
        """The most tokens each sequence may generate (each route's body says how it is asked for)."""
        raise NotImplementedError


def parse_body(body: bytes, schema: type[R], app: Any) -> R:
    """A /v1 request body checked as every route checks it: a JSON object, valid for its schema (APIError
    400 naming the first bad field), for the model served here (404 otherwise), with at most MAX_STOP
    non-empty stop strings and max_tokens within the server's limit."""
    data = read_json(body)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        req = schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        where = ".".join(str(p) for p in err["loc"])  # e.g. prompt.list[str].0: which alternative failed
        message = f"unknown field '{where}'" if err["type"] == "extra_forbidden" else f"{where}: {err['msg']}"
        raise APIError(400, message, param) from None
    if req.model is not None and req.model != app.state.model_id:
        raise APIError(
            404,
            f"model '{req.model}' is not served here (this server has '{app.state.model_id}')",
            "model",
            code="model_not_found",
        )
    stops = req.stops()
    if len(stops) > MAX_STOP or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise APIError(
            400, f"stop must be up to {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS:,} characters", "stop"
        )
    limit, asked = app.state.max_tokens_limit, req.new_tokens(app.state.run)
    if asked > limit:
        raise APIError(400, f"max_tokens={asked} is more than this server allows ({limit})", "max_tokens")
    return req


async def parse_request(request: Request, schema: type[R]) -> R:
    """parse_body of this request's body, in a worker thread: a large body's JSON and validation never
    hold the event loop (/health and the streams being sent go on meanwhile)."""
    return await off_loop(parse_body, await request.body(), schema, request.app)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a worker thread: CPU work of a request (parsing, tokenizing a long prompt or
    conversation) that must not stall the event loop every request shares."""
    return await asyncio.to_thread(fn, *args)


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


class Job:
    """One request's sequences in the model service: submitted together (sequence i draws with seed + i,
    the decoding core's rule), counted for the request log, read as (index, Event) pairs, cancelled when the
    client leaves. A full waiting queue is APIError 503 with Retry-After."""

    def __init__(
        self,
        request: Request,
        rows: list[list[int]],
        params: SamplingParams,
        prompt_tokens: int | None = None,
        with_probs: bool = False,
        id_prefix: str = "cmpl",
    ):
        app = request.app
        self.service = app.state.service
        try:
            self.gen = self.service.submit(rows, params, with_probs=with_probs)
        except Overloaded as exc:
            raise APIError(
                503,
                f"the server is busy ({exc}); retry shortly",
                kind="server_overloaded",
                headers={"Retry-After": "1"},
            ) from None
        self.rows = len(rows)
        self.counts = {"in": sum(map(len, rows)) if prompt_tokens is None else prompt_tokens, "out": 0}
        request.state.tokens = self.counts  # read by the request log (serve/middleware.py)
        self.id, self.created, self.model = f"{id_prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), app.state.model_id

    async def __aiter__(self) -> AsyncIterator[tuple[int, Event]]:
        async for index, event in self.gen:
            self.counts["out"] += event.token is not None
            yield index, event

    def cancel(self) -> None:
        """Stop generating (a no-op once every sequence has finished)."""
        self.gen.cancel()

    async def collect(self, on_token: Callable[[int, Event], None] | None = None) -> tuple[list[str], list[str]]:
        """Every sequence's whole text and finish reason; on_token(index, event) sees each token as it comes."""
        texts, finish = [""] * self.rows, ["length"] * self.rows
        async for i, event in self:
            texts[i] += event.text
            finish[i] = event.finish or finish[i]
            if on_token is not None and event.token is not None:
                on_token(i, event)
        return texts, finish

    def reply(self, kind: str, choices: list[dict[str, Any]], usage: bool = False) -> dict[str, Any]:
        """An OpenAI response object (a whole response with usage, or one streamed chunk without)."""
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if usage:
            prompt, generated = self.counts["in"], self.counts["out"]
            body["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": generated,
                "total_tokens": prompt + generated,
            }
        return body


async def answer(
    request: Request,
    job: Job,
    stream: bool,
    whole: Callable[[], Awaitable[dict[str, Any]]],
    chunks: Callable[[], AsyncIterator[dict[str, Any]]],
) -> Response:
    """The response to a submitted job: server-sent events of chunks() ending in [DONE] when streaming,
    else whole()'s JSON. A client that leaves cancels the job either way."""
    if stream:
        return StreamingResponse(
            _events(job, chunks()), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    collect = asyncio.ensure_future(whole())
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not collect.done():  # the client left: stop generating for it; nobody reads the 499 (nginx's "client closed")
        job.cancel()
        collect.cancel()
        return Response(status_code=499)
    return JSONResponse(collect.result())


async def _events(job: Job, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events framing: one `data:` line per chunk, then [DONE]. If the client leaves, the
    response is cancelled here and so is the job."""
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)
