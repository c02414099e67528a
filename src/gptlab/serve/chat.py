"""POST /v1/chat/completions: OpenAI's chat API for fine-tuned runs (those with a chat template).

The route is thin: messages -> the run's chat template -> prompt ids (the oldest turns dropped when
the conversation outgrows the context window), then the model service's continuous batching
(serve/service.py), ending at the assistant's end-of-turn. A client that leaves (streaming or not)
cancels its sequences. A base run (no chat template) answers 400 saying so.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptlab.errors import GptlabError
from gptlab.inference.decoding import SamplingParams
from gptlab.posttrain.template import END, ChatTemplate, Message, has_chat_tokens
from gptlab.runs import LoadedRun
from gptlab.serve.completions import whole_unless_gone
from gptlab.serve.errors import ERROR_RESPONSES, read_json
from gptlab.serve.openai import MAX_SEED, MAX_SEQUENCES, MAX_STOP, APIError, sampling_params
from gptlab.serve.service import Generation, Overloaded

router = APIRouter()


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # accepted and ignored, as OpenAI clients may send it


class ChatRequest(BaseModel):
    """POST /v1/chat/completions body (the sampling fields gptlab has)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)  # the newer name of max_tokens
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_SEQUENCES)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    stream: bool = False
    user: str | None = None  # accepted and ignored


def submit(app: Any, rows: list[list[int]], params: SamplingParams) -> Generation:
    """The sequences of one request handed to the model service (sequence i draws with seed + i, as
    /v1/completions does); 503 with Retry-After when its waiting queue is full."""
    try:
        return app.state.service.submit(rows, params)
    except Overloaded as exc:
        raise APIError(
            503, f"the server is busy ({exc}); retry shortly", kind="server_overloaded", headers={"Retry-After": "1"}
        ) from None


def _parse(app: Any, body: bytes) -> tuple[ChatRequest, list[int], SamplingParams]:
    """The request, the prompt ids and the sampling settings, or an APIError naming what is wrong."""
    data = read_json(body)  # the checks every route's body gets (malformed, too deep, NaN)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"unknown field '{'.'.join(map(str, err['loc']))}'", param) from None
        raise APIError(400, f"{'.'.join(map(str, err['loc']))}: {err['msg']}", param) from None
    if req.model is not None and req.model != app.state.model_id:
        raise APIError(
            404,
            f"model '{req.model}' is not served here (this server has '{app.state.model_id}')",
            "model",
            code="model_not_found",
        )
    run: LoadedRun = app.state.run
    if not has_chat_tokens(run.tokenizer):
        raise APIError(
            400,
            f"the model '{app.state.model_id}' has no chat template (it is a base model); "
            "use /v1/completions, or fine-tune it with `gptlab finetune` first",
            "messages",
        )
    stops = [] if req.stop is None else [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise APIError(400, f"stop must be up to {MAX_STOP} non-empty strings", "stop")
    block = run.config.model.block_size
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = block if max_tokens is None else max_tokens
    if max_tokens > app.state.max_tokens_limit:
        raise APIError(
            400, f"max_tokens={max_tokens} is more than this server allows ({app.state.max_tokens_limit})", "max_tokens"
        )
    template = ChatTemplate(run.tokenizer)
    try:
        # Keep the latest turns that leave room for at least one answer token in the window.
        ids, _ = template.prompt_within([Message(m.role, m.content) for m in req.messages], block - 1)
    except GptlabError as exc:
        raise APIError(400, str(exc), "messages", code="context_length_exceeded") from None
    # The one validation /v1 and /api share (a temperature too small to divide by is a 400 here too).
    params = sampling_params(max_tokens, req.temperature, 0, req.top_p, 1.0, [*stops, END], req.seed)
    return req, ids, params


class _Chat:
    """One request's answers, whole or streamed as chat.completion.chunk events."""

    def __init__(self, app: Any, req: ChatRequest, ids: list[int], params: SamplingParams):
        self.app, self.req, self.ids, self.params = app, req, ids, params
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), app.state.model_id
        self.gen = submit(app, [ids] * req.n, params)
        self.counts = {"in": len(ids) * req.n, "out": 0}  # read by the request log

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    async def whole(self) -> dict[str, Any]:
        """The chat.completion object."""
        texts, finish, generated = [""] * self.req.n, ["length"] * self.req.n, 0
        async for i, event in self.gen:
            generated += event.token is not None
            self.counts["out"] = generated
            texts[i] += event.text
            finish[i] = event.finish or finish[i]
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": None,
                "finish_reason": finish[i],
            }
            for i in range(self.req.n)
        ]
        usage = {
            "prompt_tokens": len(self.ids) * self.req.n,
            "completion_tokens": generated,
            "total_tokens": len(self.ids) * self.req.n + generated,
        }
        return self._object("chat.completion", choices, usage=usage)

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: the role, then content pieces, then each choice's finish, then [DONE].
        If the client leaves, the response is cancelled here and so are its sequences."""

        def chunk(i: int, delta: dict[str, Any], finish: str | None = None) -> str:
            body = self._object(
                "chat.completion.chunk", [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]
            )
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            for i in range(self.req.n):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for i, event in self.gen:
                self.counts["out"] += event.token is not None
                if event.text:
                    yield chunk(i, {"content": event.text})
                if event.finish:
                    yield chunk(i, {}, event.finish)
            yield "data: [DONE]\n\n"
        finally:
            self.gen.cancel()  # a no-op once every sequence has finished


@router.post("/v1/chat/completions", responses=ERROR_RESPONSES)
async def chat_completions(request: Request) -> Any:
    """OpenAI's chat completions, whole or streamed."""
    app = request.app
    req, ids, params = _parse(app, await request.body())
    job = _Chat(app, req, ids, params)
    request.state.tokens = job.counts
    if req.stream:
        return StreamingResponse(job.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await whole_unless_gone(request, job.whole(), job.gen)
