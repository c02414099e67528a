"""The page's history view: the steps whose weights a run kept (train/history.py), and a greedy
continuation of a prompt by the model as it was at one of them. The same prompt's next-token bars and
attention maps at a kept step come from /api/next and /api/attention with their `step` field
(explore.py); every model call goes through the one model service (service.call with a step).

    GET  /api/history            {"steps": [0, 50, 100, ...], "final": N}
    POST /api/history/continue   {"text", "step", "max_new_tokens"} -> {"step", "text", "continuation"}
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gptlab.inference.engine import generate_steps
from gptlab.model.gpt import GPT
from gptlab.runs import history_steps
from gptlab.serve.errors import PAGE_ERROR_RESPONSES
from gptlab.serve.explore import _encode, _run, call_at, check_step
from gptlab.serve.requests import off_loop, sampling_params

router = APIRouter()
MAX_CONTINUATION = 200  # tokens: a few lines, enough to see gibberish turn into text


class ContinueRequest(BaseModel):
    """Body of /api/history/continue."""

    model_config = ConfigDict(allow_inf_nan=False)
    text: str
    step: int
    max_new_tokens: int = Field(40, ge=1, le=MAX_CONTINUATION)


@router.get("/api/history")
async def history(request: Request) -> dict[str, Any]:
    """The steps whose weights the run kept ([] when it kept none) and the step of its own weights."""
    run = _run(request)
    return {"steps": await off_loop(history_steps, run.path), "final": run.step}


@router.post("/api/history/continue", responses=PAGE_ERROR_RESPONSES)
async def continue_at(body: ContinueRequest, request: Request) -> dict[str, Any]:
    """The prompt continued greedily by the weights kept at `step`, through the one decoding core."""
    run = _run(request)
    check_step(run, body.step)
    ids = await off_loop(_encode, run, body.text)
    params = sampling_params(body.max_new_tokens, 0.0)  # greedy: the same text every time

    def greedy(model: torch.nn.Module) -> str:
        assert isinstance(model, GPT)  # _encode refused an encoder–decoder run
        return "".join(e.text for events in generate_steps(model, run.tokenizer, [ids], params) for e in events)

    continuation = await call_at(request, greedy, body.step)
    return {"step": body.step, "text": body.text + continuation, "continuation": continuation}
