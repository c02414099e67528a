"""POST /v1/chat/completions: OpenAI's chat API for fine-tuned runs (those with a chat template).

The route is thin: messages -> the run's chat template -> prompt ids (the oldest turns dropped when
the conversation outgrows the context window), then the model service's continuous batching
(serve/service.py), ending at the assistant's end-of-turn. A client that leaves (streaming or not)
cancels its sequences. A base run (no chat template) answers 400 saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gptlab.errors import ContextTooLong, GptlabError
from gptlab.posttrain.template import END, ChatTemplate, Message, has_chat_tokens
from gptlab.runs import LoadedRun
from gptlab.serve.errors import ERROR_RESPONSES, APIError
from gptlab.serve.requests import Job, SamplingRequest, answer, off_loop, parse_request, sampling_params

router = APIRouter()
MAX_MESSAGES = 1000  # one conversation's messages
MAX_CONVERSATION_CHARS = 1_000_000  # all of its messages' text together


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # accepted and ignored, as OpenAI clients may send it


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions body (the sampling fields gptlab has)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)  # the newer name of max_tokens

    def new_tokens(self, run: LoadedRun) -> int:
        """max_completion_tokens, else max_tokens, else up to a context window's worth."""
        asked = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return run.config.model.block_size if asked is None else asked


@router.post("/v1/chat/completions", responses=ERROR_RESPONSES)
async def chat_completions(request: Request) -> Any:
    """OpenAI's chat completions, whole or streamed."""
    app, run = request.app, request.app.state.run
    req = await parse_request(request, ChatRequest)
    if not has_chat_tokens(run.tokenizer):
        raise APIError(
            400,
            f"the model '{app.state.model_id}' has no chat template (it is a base model); "
            "use /v1/completions, or fine-tune it with `gptlab finetune` first",
            "messages",
        )
    chars = sum(len(m.content) for m in req.messages)
    if chars > MAX_CONVERSATION_CHARS:
        raise APIError(
            400, f"the messages hold {chars:,} characters; at most {MAX_CONVERSATION_CHARS:,} are accepted", "messages"
        )
    ids = await off_loop(_prompt, run, req.messages)
    params = sampling_params(req.new_tokens(run), req.temperature, 0, req.top_p, 1.0, [*req.stops(), END], req.seed)
    job = Job(request, [ids] * req.n, params, id_prefix="chatcmpl")
    return await answer(request, job, req.stream, lambda: _whole(job), lambda: _chunks(job))


def _prompt(run: LoadedRun, messages: list[ChatMessage]) -> list[int]:
    """The prompt of the latest turns that leave room for at least one answer token in the window."""
    try:
        turns = [Message(m.role, m.content) for m in messages]
        ids, _ = ChatTemplate(run.tokenizer).prompt_within(turns, run.config.model.block_size - 1)
        return ids
    except ContextTooLong as exc:
        raise APIError(400, str(exc), "messages", code="context_length_exceeded") from None
    except GptlabError as exc:  # e.g. a character the tokenizer lacks
        raise APIError(400, str(exc), "messages") from None


async def _whole(job: Job) -> dict[str, Any]:
    """The chat.completion object."""
    texts, finish = await job.collect()
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": why}
        for i, (text, why) in enumerate(zip(texts, finish))
    ]
    return job.reply("chat.completion", choices, usage=True)


async def _chunks(job: Job) -> AsyncIterator[dict[str, Any]]:
    """The role, then content pieces, then each choice's finish."""

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return job.reply(
            "chat.completion.chunk", [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )

    for i in range(job.rows):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for i, event in job:
        if event.text:
            yield chunk(i, {"content": event.text})
        if event.finish:
            yield chunk(i, {}, event.finish)
