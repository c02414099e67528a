"""A reward model's score over HTTP: POST /api/reward, for a run trained with `gptlab reward`.

    POST /api/reward   {"prompt": str, "completion": str}  -> {"reward": float}
                       {"text": str}                        -> {"reward": float}  (an answer to an empty prompt)

The conversation is encoded off the event loop and scored by the model service between two
scheduler steps (service.call), like every route that needs the model.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from gptlab.errors import GptlabError
from gptlab.posttrain.reward import conversation_ids, score_rows
from gptlab.posttrain.template import ChatTemplate
from gptlab.serve.errors import PAGE_ERROR_RESPONSES
from gptlab.serve.requests import off_loop

router = APIRouter()


class RewardRequest(BaseModel):
    """Body of /api/reward: text alone, or prompt and completion."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None


def _ids(run: Any, body: RewardRequest) -> list[int]:
    if body.text is not None and (body.prompt is not None or body.completion is not None):
        raise HTTPException(400, "give either text, or prompt and completion, not both")
    if body.text is None and (body.prompt is None or body.completion is None):
        raise HTTPException(400, "give text, or prompt and completion")
    if body.text is not None:
        prompt, completion = "", body.text
    else:
        assert body.prompt is not None and body.completion is not None  # checked above
        prompt, completion = body.prompt, body.completion
    try:
        return conversation_ids(ChatTemplate(run.tokenizer), prompt, completion, run.config.model.block_size)
    except GptlabError as exc:  # a character outside a char tokenizer's vocabulary
        raise HTTPException(400, str(exc)) from None


@router.post("/api/reward", responses=PAGE_ERROR_RESPONSES)
async def reward(body: RewardRequest, request: Request) -> dict[str, float]:
    """The reward model's score of one answer (higher: preferred)."""
    run, service = request.app.state.run, request.app.state.service
    if not run.config.model.reward_head:
        raise HTTPException(400, "this run is not a reward model (train one with `gptlab reward`)")
    ids = await off_loop(_ids, run, body)
    device = next(run.model.parameters()).device
    rewards = await service.call(lambda model: score_rows(model, [ids], device))
    return {"reward": float(rewards[0])}
