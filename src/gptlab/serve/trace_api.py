"""The page's step-through view: POST /api/trace, one forward pass of the prompt shown stage by stage.

Included in the app by serve/app.py beside the explorer's router (explore.py); the numbers come from
inference/trace.py's trace_view, the only model call here, run by the model service between two
scheduler steps (routes never touch the model).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from gptlab.errors import GptlabError
from gptlab.inference.trace import trace_view
from gptlab.serve.errors import PAGE_ERROR_RESPONSES
from gptlab.serve.explore import _encode, _window

router = APIRouter()


class TraceRequest(BaseModel):
    """Body of /api/trace."""

    text: str
    stage: int = Field(0, ge=0)  # which stage's tensor comes back as a heatmap
    head: int = Field(0, ge=0)  # for per-head stages (q, k, v, scores, weights...), which head
    k: int = Field(10, ge=1, le=100)  # next-token candidates; also the vocabulary columns of logits/probs


@router.post("/api/trace", responses=PAGE_ERROR_RESPONSES)
async def trace(body: TraceRequest, request: Request) -> dict[str, Any]:
    """Every stage of one forward pass over the context window (name, module, operation, shape,
    statistics), the architecture, the top next tokens, and one stage's tensor as a sampled heatmap."""
    run = request.app.state.run
    ids = _window(run, _encode(run, body.text))
    try:
        return await request.app.state.service.call(
            lambda model: trace_view(model, run.tokenizer, ids, body.stage, body.head, body.k)
        )
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None
