"""The page's "Train on this" view: training steps on one window, on a copy of the served run's model.

    POST /api/train-step         {"text": str|null, "steps": 1..100, "lr": float|null} -> the lesson's report
                                 (train/lesson.py; the object `gptlab step --json` prints)
    POST /api/train-step/reset   the copy back to the run's weights and optimizer state -> {"trained_steps": 0}

The copy (a Lesson) is made on the first step, beside the served model and apart from it: /v1 and the
other views keep the run's weights, and the run on disk is only read. Successive calls continue from the
copy, so repeated clicks memorise a window. Its steps run in a worker thread, never on the event loop or in
the model service's thread, so decoding goes on meanwhile; one lesson step at a time per server, a second
one meanwhile is refused with 503 (server_overloaded), as a full queue is.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from gptlab.errors import GptlabError
from gptlab.serve.errors import PAGE_ERROR_RESPONSES, APIError
from gptlab.serve.requests import off_loop, refuse_overlong_text
from gptlab.train.lesson import Lesson

router = APIRouter()


class TrainStepRequest(BaseModel):
    """Body of /api/train-step (ranges are checked by the lesson, whose one-line reasons come back as 400)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str | None = None  # None: a random window of the run's validation data
    steps: int = 1
    lr: float | None = None  # None: the run's own rate (train/lesson.py's default_lr)


class LessonHolder:
    """The served run's lesson, made on first use, and the lock that lets one step run at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lesson: Lesson | None = None

    def claim(self) -> None:
        """Take the lock for a worker thread, or 503 when a lesson step is running."""
        if not self.lock.acquire(blocking=False):
            raise APIError(
                503,
                "a training step is already running on this server; retry shortly",
                kind="server_overloaded",
                headers={"Retry-After": "1"},
            )

    def train(self, run: Any, device: torch.device, text: str | None, steps: int, lr: float | None) -> dict[str, Any]:
        """In a worker thread holding the lock (released here, even if the client has left)."""
        try:
            if self.lesson is None:
                self.lesson = Lesson(run.path, device)
            lesson = self.lesson
            ids = lesson.random_window() if text is None else lesson.window_of_text(text)
            return lesson.train(ids, steps, lr)
        finally:
            self.lock.release()

    def reset(self) -> None:
        """In a worker thread holding the lock: the copy back to the run's state."""
        try:
            if self.lesson is not None:
                self.lesson.reset()
        finally:
            self.lock.release()


def _holder(request: Request) -> LessonHolder:
    return request.app.state.lesson


@router.post("/api/train-step", responses=PAGE_ERROR_RESPONSES)
async def train_step(body: TrainStepRequest, request: Request) -> dict[str, Any]:
    """Training steps on one window (the text's last block_size + 1 tokens, or a random window of the run's
    validation data): every target's probability and loss before and after, the losses trained on, the
    gradient's norm by layer and role, the update's norm by role."""
    run = request.app.state.run
    if body.text is not None:
        refuse_overlong_text(body.text, run.config.model.block_size, "the text")
    device = next(run.model.parameters()).device  # the lesson lives beside the served model
    holder = _holder(request)
    holder.claim()
    try:
        return await off_loop(holder.train, run, device, body.text, body.steps, body.lr)
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None


@router.post("/api/train-step/reset", responses=PAGE_ERROR_RESPONSES)
async def train_step_reset(request: Request) -> dict[str, Any]:
    """The lesson's copy back to the run's weights and optimizer state."""
    holder = _holder(request)
    holder.claim()
    await off_loop(holder.reset)
    return {"trained_steps": 0}
