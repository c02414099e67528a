"""The page's view of an encoder–decoder run: decoder self-attention and cross-attention side by side.

POST /api/encdec/attention {source, target, layer, head}: the source's tokens, the decoder's input
tokens (the separator, then the target), and one layer and head's self-attention (T x T, causal)
and cross-attention (T x S: row = target position, column = source position). The maps are computed
by the model service between two scheduler steps, as the page's other routes do (serve/explore.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from gptlab.data.pairs import separator_id
from gptlab.errors import GptlabError
from gptlab.model.introspect import encdec_attention_maps
from gptlab.serve.errors import PAGE_ERROR_RESPONSES

router = APIRouter()


class EncdecAttentionRequest(BaseModel):
    """Body of /api/encdec/attention."""

    source: str
    target: str = ""
    layer: int = Field(0, ge=0)
    head: int = Field(0, ge=0)


def _rounded(weights) -> list[list[float]]:
    return [[round(w, 5) for w in row] for row in weights.tolist()]


@router.post("/api/encdec/attention", responses=PAGE_ERROR_RESPONSES)
async def encdec_attention(body: EncdecAttentionRequest, request: Request) -> dict[str, Any]:
    """One layer and head's decoder self-attention and cross-attention for a source and target."""
    run = request.app.state.run
    m = run.config.model
    if m.arch != "encdec":
        raise HTTPException(400, f"this run is arch={m.arch}: cross-attention needs an encoder–decoder run")
    if body.layer >= m.n_layer or body.head >= m.n_head:
        raise HTTPException(400, f"layer must be < {m.n_layer} and head < {m.n_head}")
    try:
        source = run.tokenizer.encode(body.source)
        target = [separator_id(run.tokenizer)] + run.tokenizer.encode(body.target)
    except GptlabError as exc:
        raise HTTPException(400, str(exc)) from None
    if not source:
        raise HTTPException(400, "the source is empty: type at least one character")
    if max(len(source), len(target)) > m.block_size:
        raise HTTPException(400, f"source and target (with its start token) must each fit block_size={m.block_size}")
    self_maps, cross_maps = await request.app.state.service.call(
        lambda model: encdec_attention_maps(model, source, target)
    )
    piece = lambda i: {"id": i, "piece": run.tokenizer.id_to_piece(i)}  # noqa: E731
    return {
        "source_tokens": [piece(i) for i in source],
        "target_tokens": [piece(i) for i in target],
        "layer": body.layer,
        "head": body.head,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "self": _rounded(self_maps[body.layer, body.head]),
        "cross": _rounded(cross_maps[body.layer, body.head]),
    }
