"""The page's step-through view: POST /api/trace, one forward pass of the prompt shown stage by stage.

Included in the app by serve/app.py beside the explorer's router (explore.py). The page asks for one
stage at a time; the prompt's whole trace is recorded once (inference/trace.py's record_trace, run by the
model service between two scheduler steps) and every later stage of the same prompt is served from that
record, without running the model again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from gptlab.errors import GptlabError
from gptlab.inference.trace import TraceRecord, record_trace, view_stage
from gptlab.serve.errors import PAGE_ERROR_RESPONSES
from gptlab.serve.explore import _encode, _window
from gptlab.serve.requests import off_loop

# A gpt2-small-shaped record holds about 36 MB of grids (12 blocks of sampled heatmaps, every head kept),
# a tutorial-sized one well under 1 MB: the last few prompts fit, a much larger model's is not kept.
MAX_RECORD_BYTES = 128 * 2**20
MAX_RECORDS = 4

router = APIRouter()


class TraceRequest(BaseModel):
    """Body of /api/trace."""

    text: str
    stage: int = Field(0, ge=0)  # which stage's tensor comes back as a heatmap
    head: int = Field(0, ge=0)  # for per-head stages (q, k, v, scores, weights...), which head
    k: int = Field(10, ge=1, le=100)  # next-token candidates; also the vocabulary columns of logits/probs


class TraceRecords:
    """The recorded traces of the last few prompts, newest last, at most max_bytes of grids in all (a
    record larger than that alone is not kept). A recording still running is shared by every request
    for the same prompt, and finishes even if the client that started it leaves."""

    def __init__(self, max_bytes: int = MAX_RECORD_BYTES, max_records: int = MAX_RECORDS):
        self.max_bytes, self.max_records = max_bytes, max_records
        self._records: OrderedDict[tuple[Any, ...], asyncio.Future[TraceRecord]] = OrderedDict()

    async def get(self, key: tuple[Any, ...], record: Callable[[], Awaitable[TraceRecord]]) -> TraceRecord:
        """The record for key, made by record() unless kept (or being made) already."""
        entry = self._records.get(key)
        if entry is None:
            entry = asyncio.ensure_future(record())
            self._records[key] = entry
            entry.add_done_callback(lambda _: self._trim())
        self._records.move_to_end(key)
        return await asyncio.shield(entry)

    def _trim(self) -> None:
        for key, entry in list(self._records.items()):  # a failed recording, or one over the bound alone
            if entry.done() and (entry.cancelled() or entry.exception() or entry.result().nbytes > self.max_bytes):
                del self._records[key]
        done = [key for key, entry in self._records.items() if entry.done()]
        held = sum(self._records[key].result().nbytes for key in done)
        while done and (held > self.max_bytes or len(self._records) > self.max_records):
            held -= self._records.pop(done.pop(0)).result().nbytes  # the oldest first


def _records(request: Request) -> TraceRecords:
    """This served run's records (weights do not change while served, so a record stays true)."""
    return request.app.state.trace_records


@router.post("/api/trace", responses=PAGE_ERROR_RESPONSES)
async def trace(body: TraceRequest, request: Request) -> dict[str, Any]:
    """Every stage of one forward pass over the context window (name, module, operation, shape,
    statistics), the architecture, the top next tokens, and one stage's tensor as a sampled heatmap."""
    run, service = request.app.state.run, request.app.state.service
    ids = _window(run, await off_loop(_encode, run, body.text))
    record = await _records(request).get(
        (tuple(ids), body.k), lambda: service.call(lambda model: record_trace(model, run.tokenizer, ids, body.k))
    )
    try:
        return view_stage(record, body.stage, body.head)
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None
