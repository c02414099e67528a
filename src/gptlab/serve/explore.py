"""The exploration page: a router serving the page at `/`, its static files, and JSON under /api.

It reads two attributes of the app it is included in: `app.state.run` (a runs.LoadedRun, for its
tokenizer and config) and `app.state.service` (the ModelService: every model call, every draw,
with the same validation, sampler and limits as /v1). Endpoints are documented in the HTTP API
reference (docs/reference/http-api.md, from the OpenAPI schema) and in docs/concepts/serving.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from gptlab.errors import GptlabError
from gptlab.inference.engine import generate_steps
from gptlab.inference.probs import top_candidates
from gptlab.model.embedding_map import nearest_neighbours, pca_2d
from gptlab.model.ends import LanguageModel
from gptlab.model.gpt import GPT
from gptlab.model.introspect import attention_maps
from gptlab.runs import LoadedRun, check_kept
from gptlab.serve.errors import PAGE_ERROR_RESPONSES, APIError
from gptlab.serve.requests import MAX_TEMPERATURE, Job, off_loop, refuse_overlong_text, sampling_params
from gptlab.serve.service import ModelService

T = TypeVar("T")
STATIC = Path(__file__).parent / "static"
router = APIRouter()


class NextRequest(BaseModel):
    """Body of /api/next."""

    model_config = ConfigDict(allow_inf_nan=False)
    text: str
    k: int = Field(10, ge=1, le=1000)
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    step: int | None = None  # the weights kept at this step of the run's history; None: the run's own


class StepRequest(BaseModel):
    """Body of /api/step."""

    model_config = ConfigDict(allow_inf_nan=False)
    text: str
    mode: Literal["greedy", "sample", "token"] = "greedy"
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    token_id: int | None = None  # mode "token": the id to append
    seed: int | None = None  # mode "sample": same seed, same choice (checked with the other settings)


class AttentionRequest(BaseModel):
    """Body of /api/attention."""

    model_config = ConfigDict(allow_inf_nan=False)
    text: str
    layer: int = Field(0, ge=0)
    head: int = Field(0, ge=0)
    step: int | None = None  # the weights kept at this step of the run's history; None: the run's own


def _run(request: Request) -> LoadedRun:
    return request.app.state.run


def _service(request: Request) -> ModelService:
    return request.app.state.service


def _encode(run: LoadedRun, text: str) -> list[int]:
    """Prompt ids, or a 400 with the tokenizer's reason (unknown characters, empty prompt)."""
    if run.config.model.arch != "gpt":
        raise HTTPException(
            400,
            "this run is an encoder–decoder: the page shows its source -> target attention "
            "(/api/encdec/attention) instead of continuing a prompt",
        )
    if not text:
        raise HTTPException(400, "the prompt is empty: type at least one character")
    refuse_overlong_text(text, run.config.model.block_size, "the prompt")
    try:
        return run.tokenizer.encode(text)
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None


def check_step(run: LoadedRun, step: int | None) -> None:
    """A 400 naming `step` (and listing the kept ones) when the run did not keep that step's weights."""
    if step is not None:
        try:
            check_kept(run.path, step)
        except GptlabError as exc:
            raise HTTPException(400, str(exc)) from None


async def call_at(request: Request, fn: Callable[[torch.nn.Module], T], step: int | None) -> T:
    """fn(model) on the model service's thread, with the weights kept at `step` (None: the run's own); a kept
    file gone or damaged since check_step is a 400 too."""
    try:
        return await _service(request).call(fn, step=step)
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None


def _token(run: LoadedRun, token_id: int) -> dict[str, Any]:
    return {"id": token_id, "piece": run.tokenizer.id_to_piece(token_id)}


def _window(run: LoadedRun, ids: list[int]) -> list[int]:
    """The ids the model actually sees: the last block_size of them."""
    return ids[-run.config.model.block_size :]


async def _one_token(
    request: Request, ids: list[int], temperature: float, seed: int | None
) -> tuple[int, torch.Tensor]:
    """One token drawn by the model service's sampler (temperature 0: greedy) and the distribution
    at the temperature (0 shows it at 1)."""
    params = sampling_params(1, temperature, seed=seed)  # APIError 400 naming a bad setting
    job = Job(request, [ids], params, with_probs=True)  # APIError 503 when the queue is full
    try:
        async for _, event in job:
            if event.token is not None:
                assert event.probs is not None  # asked for with_probs
                return event.token, event.probs
    finally:
        job.cancel()
    raise APIError(503, "the server stopped before answering")


async def _kept_probs(request: Request, ids: list[int], temperature: float, step: int) -> torch.Tensor:
    """The next-token distribution of the weights kept at `step`, through the one decoding core on the
    model thread (the scheduler serves the run's own weights only)."""
    params = sampling_params(1, temperature)  # APIError 400 naming a bad setting

    def first(model: torch.nn.Module) -> torch.Tensor:
        assert isinstance(model, GPT)  # _encode refused an encoder–decoder run
        for events in generate_steps(model, None, [ids], params, with_probs=True):
            assert events[0].probs is not None  # asked for with_probs
            return events[0].probs
        raise AssertionError("one token was asked for")

    return await call_at(request, first, step)


def _token_embeddings(model: torch.nn.Module) -> torch.Tensor:
    """The served model's token embedding matrix (V, C), in either architecture."""
    assert isinstance(model, LanguageModel)
    return model.wte.weight


def _gpt_attention_maps(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Every layer and head's attention weights over ids, of a GPT (_encode refused an encoder–decoder run)."""
    assert isinstance(model, GPT)
    return attention_maps(model, ids)


async def _embedding_map(request: Request) -> tuple[torch.Tensor, list[float]]:
    """The token embeddings' 2-D PCA (points (V, 2), explained variance), computed once per served run:
    the weights do not change while served."""
    state = request.app.state
    if getattr(state, "embedding_map", None) is None:
        state.embedding_map = await _service(request).call(lambda model: pca_2d(_token_embeddings(model)))
    return state.embedding_map


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The exploration page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    """A file of the page (scripts, styles); only files shipped in serve/static/."""
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path)


@router.get("/api/info")
def info(request: Request) -> dict[str, Any]:
    """What is being served: the run, its step and model shape."""
    run = _run(request)
    m = run.config.model
    return {
        "run": run.path.resolve().name,
        "step": run.step,
        "tokenizer": run.tokenizer.kind,
        "vocab_size": m.vocab_size,
        "block_size": m.block_size,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "n_embd": m.n_embd,
        "arch": m.arch,
    }


@router.post("/api/next", responses=PAGE_ERROR_RESPONSES)
async def next_token(body: NextRequest, request: Request) -> dict[str, Any]:
    """The prompt's tokens and the top-k candidates for the next token at the given temperature."""
    run = _run(request)
    check_step(run, body.step)
    ids = await off_loop(_encode, run, body.text)
    if body.step is None:
        _, probs = await _one_token(request, ids, body.temperature, None)
    else:
        probs = await _kept_probs(request, ids, body.temperature, body.step)
    candidates = top_candidates(run.tokenizer, probs, body.k)
    return {
        "tokens": [_token(run, i) for i in ids],
        "context": len(_window(run, ids)),
        "temperature": body.temperature,
        "step": body.step,
        "candidates": [{"id": c.id, "piece": c.piece, "prob": c.prob} for c in candidates],
    }


@router.post("/api/step", responses=PAGE_ERROR_RESPONSES)
async def step(body: StepRequest, request: Request) -> dict[str, Any]:
    """Append one token to the text: the most likely, a sample at the temperature, or a chosen id."""
    run = _run(request)
    ids = await off_loop(_encode, run, body.text)
    if body.mode == "token" and (body.token_id is None or not 0 <= body.token_id < run.config.model.vocab_size):
        raise HTTPException(400, f"mode 'token' needs a token_id in [0, {run.config.model.vocab_size})")
    drawn, probs = await _one_token(request, ids, body.temperature, body.seed)
    if body.mode == "greedy":
        drawn = int(probs.argmax())  # the top at any temperature
    chosen = body.token_id if body.mode == "token" and body.token_id is not None else drawn  # checked above
    return {
        "token": {**_token(run, chosen), "prob": float(probs[chosen])},
        "text": run.tokenizer.decode(ids + [chosen]),
    }


@router.post("/api/attention", responses=PAGE_ERROR_RESPONSES)
async def attention(body: AttentionRequest, request: Request) -> dict[str, Any]:
    """One layer and head's attention weights over the context window (T x T, row = query)."""
    run = _run(request)
    m = run.config.model
    if body.layer >= m.n_layer or body.head >= m.n_head:
        raise HTTPException(400, f"layer must be < {m.n_layer} and head < {m.n_head}")
    check_step(run, body.step)
    ids = _window(run, await off_loop(_encode, run, body.text))
    maps = await call_at(request, lambda model: _gpt_attention_maps(model, ids), body.step)
    weights = maps[body.layer, body.head]
    return {
        "tokens": [_token(run, i) for i in ids],
        "layer": body.layer,
        "head": body.head,
        "step": body.step,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "weights": [[round(w, 5) for w in row] for row in weights.tolist()],
    }


@router.get("/api/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    """Every token as a point of the 2-D PCA projection of the token embedding matrix."""
    run = _run(request)
    points, explained = await _embedding_map(request)
    return {
        "explained": explained,
        "points": [{**_token(run, i), "x": round(x, 5), "y": round(y, 5)} for i, (x, y) in enumerate(points.tolist())],
    }


@router.get("/api/neighbours", responses=PAGE_ERROR_RESPONSES)
async def neighbours(
    request: Request, token_id: int = Query(..., ge=0, alias="id"), k: int = Query(10, ge=1, le=100)
) -> dict[str, Any]:
    """The k tokens whose embeddings are closest to token `id` by cosine similarity."""
    run = _run(request)
    if token_id >= run.config.model.vocab_size:
        raise HTTPException(400, f"id must be < vocab_size={run.config.model.vocab_size}")
    near = await _service(request).call(lambda model: nearest_neighbours(_token_embeddings(model), token_id, k))
    return {"token": _token(run, token_id), "neighbours": [{**_token(run, i), "cosine": round(c, 5)} for i, c in near]}
