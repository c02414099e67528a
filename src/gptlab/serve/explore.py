"""The exploration page: a router serving the page at `/`, its static files, and JSON under /api.

It reads two attributes of the app it is included in: `app.state.run` (a runs.LoadedRun) and
`app.state.model_lock` (a threading.Lock held around every model call, as the endpoints run in
worker threads). Endpoints are documented in the README ("The page").
"""

from __future__ import annotations

import secrets
import weakref
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from gptlab.errors import GptlabError
from gptlab.inference.probs import next_token_probs, top_candidates
from gptlab.model.embedding_map import nearest_neighbours, pca_2d
from gptlab.model.introspect import attention_maps
from gptlab.runs import LoadedRun
from gptlab.serve.openai import MAX_CHARS_PER_POSITION

STATIC = Path(__file__).parent / "static"
router = APIRouter()
# PCA of a model's embedding matrix, computed once per loaded model (weights do not change while served).
_pca_cache: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


class NextRequest(BaseModel):
    """Body of /api/next."""

    text: str
    k: int = Field(10, ge=1, le=1000)
    temperature: float = Field(1.0, ge=0.0, le=100.0)


class StepRequest(BaseModel):
    """Body of /api/step."""

    text: str
    mode: Literal["greedy", "sample", "token"] = "greedy"
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    token_id: int | None = None  # mode "token": the id to append
    seed: int | None = None  # mode "sample": same seed, same choice


class AttentionRequest(BaseModel):
    """Body of /api/attention."""

    text: str
    layer: int = Field(0, ge=0)
    head: int = Field(0, ge=0)


def _run(request: Request) -> LoadedRun:
    return request.app.state.run


def _encode(run: LoadedRun, text: str) -> list[int]:
    """Prompt ids, or a 400 with the tokenizer's reason (unknown characters, empty prompt)."""
    if run.config.model.arch != "gpt":
        raise HTTPException(400, "this run is an encoder–decoder: the page shows its source -> target attention "
                            "(/api/encdec/attention) instead of continuing a prompt")
    if not text:
        raise HTTPException(400, "the prompt is empty: type at least one character")
    limit = MAX_CHARS_PER_POSITION * run.config.model.block_size
    if len(text) > limit:
        raise HTTPException(400, f"the prompt is {len(text):,} characters; at most {limit:,} are accepted")
    try:
        return run.tokenizer.encode(text)
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None


def _token(run: LoadedRun, token_id: int) -> dict[str, Any]:
    return {"id": token_id, "piece": run.tokenizer.id_to_piece(token_id)}


def _window(run: LoadedRun, ids: list[int]) -> list[int]:
    """The ids the model actually sees: the last block_size of them."""
    return ids[-run.config.model.block_size:]


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
    return {"run": run.path.resolve().name, "step": run.step, "tokenizer": run.tokenizer.kind,
            "vocab_size": m.vocab_size, "block_size": m.block_size, "n_layer": m.n_layer,
            "n_head": m.n_head, "n_embd": m.n_embd, "arch": m.arch}


@router.post("/api/next")
def next_token(body: NextRequest, request: Request) -> dict[str, Any]:
    """The prompt's tokens and the top-k candidates for the next token at the given temperature."""
    run = _run(request)
    ids = _encode(run, body.text)
    with request.app.state.model_lock:
        probs = next_token_probs(run.model, ids, body.temperature)
    candidates = top_candidates(run.tokenizer, probs, body.k)
    return {"tokens": [_token(run, i) for i in ids], "context": len(_window(run, ids)),
            "temperature": body.temperature,
            "candidates": [{"id": c.id, "piece": c.piece, "prob": c.prob} for c in candidates]}


@router.post("/api/step")
def step(body: StepRequest, request: Request) -> dict[str, Any]:
    """Append one token to the text: the most likely, a sample at the temperature, or a chosen id."""
    run = _run(request)
    ids = _encode(run, body.text)
    with request.app.state.model_lock:
        probs = next_token_probs(run.model, ids, body.temperature).cpu()
    if body.mode == "token":
        if body.token_id is None or not 0 <= body.token_id < probs.numel():
            raise HTTPException(400, f"mode 'token' needs a token_id in [0, {probs.numel()})")
        chosen = body.token_id
    elif body.mode == "greedy" or body.temperature == 0:
        chosen = int(probs.argmax())
    else:
        generator = torch.Generator().manual_seed(body.seed if body.seed is not None else secrets.randbits(63))
        chosen = int(torch.multinomial(probs, 1, generator=generator))
    return {"token": {**_token(run, chosen), "prob": float(probs[chosen])},
            "text": run.tokenizer.decode(ids + [chosen])}


@router.post("/api/attention")
def attention(body: AttentionRequest, request: Request) -> dict[str, Any]:
    """One layer and head's attention weights over the context window (T x T, row = query)."""
    run = _run(request)
    m = run.config.model
    if body.layer >= m.n_layer or body.head >= m.n_head:
        raise HTTPException(400, f"layer must be < {m.n_layer} and head < {m.n_head}")
    ids = _window(run, _encode(run, body.text))
    with request.app.state.model_lock:
        maps = attention_maps(run.model, ids)
    weights = maps[body.layer, body.head]
    return {"tokens": [_token(run, i) for i in ids], "layer": body.layer, "head": body.head,
            "n_layer": m.n_layer, "n_head": m.n_head,
            "weights": [[round(w, 5) for w in row] for row in weights.tolist()]}


@router.get("/api/embeddings")
def embeddings(request: Request) -> dict[str, Any]:
    """Every token as a point of the 2-D PCA projection of the token embedding matrix."""
    run = _run(request)
    with request.app.state.model_lock:
        cached = _pca_cache.get(run.model)
        if cached is None:
            points, explained = pca_2d(run.model.wte.weight)
            cached = {"explained": explained,
                      "points": [{**_token(run, i), "x": round(x, 5), "y": round(y, 5)}
                                 for i, (x, y) in enumerate(points.tolist())]}
            _pca_cache[run.model] = cached
    return cached


@router.get("/api/neighbours")
def neighbours(request: Request, token_id: int = Query(..., ge=0, alias="id"),
               k: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    """The k tokens whose embeddings are closest to token `id` by cosine similarity."""
    run = _run(request)
    if token_id >= run.config.model.vocab_size:
        raise HTTPException(400, f"id must be < vocab_size={run.config.model.vocab_size}")
    with request.app.state.model_lock:
        near = nearest_neighbours(run.model.wte.weight, token_id, k)
    return {"token": _token(run, token_id),
            "neighbours": [{**_token(run, i), "cosine": round(c, 5)} for i, c in near]}
