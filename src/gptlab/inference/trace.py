"""The trace of one forward pass: every intermediate from token ids to next-token probabilities.

The model runs once in recording mode (model/record.py): each module hands over the tensors it
computes, so the stages, their names and their order are the model's own (a modern variant shows
RMSNorm, RoPE, QK-norm, its MLP's activation). The trace adds only the last stage, `probs`: the
softmax the sampler applies to the logits.

    trace_ids      ids -> Trace (every stage, the top candidates at one position)
    at_position    one stage's values at the chosen position
    record_trace   the page's step-through view of a prompt, recorded once: the stage list with
                   statistics and every stage's tensor as a heatmap grid, sampled to a bounded size
                   (a gpt2-small trace stays small)
    view_stage     one stage of a recorded trace, as the page shows it (no model call)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gptlab.errors import GptlabError
from gptlab.inference.engine import eval_mode
from gptlab.inference.probs import Candidate, top_candidates
from gptlab.inference.sampling import probs_from_logits
from gptlab.model.gpt import GPT
from gptlab.model.layers import mlp_hidden
from gptlab.model.record import Recorder, Stage, recording
from gptlab.tokenizers import Tokenizer

# The page's heatmap holds at most this many rows (positions) and columns (channels, keys, tokens).
MAX_ROWS = 96
MAX_COLS = 128


@dataclass
class Trace:
    """One forward pass, stage by stage."""

    tokens: list[tuple[int, str]]  # (id, piece) of each position
    stages: list[Stage]  # in the order the data flows; the last two are `logits` and `probs`
    position: int  # the position whose values and next-token candidates are shown
    top: list[Candidate]  # the most likely next tokens after `position`
    dims: dict[str, int]  # the sizes behind the axis symbols (T, C, H, D, F, V)


def dims_of(model: GPT, T: int) -> dict[str, int]:
    """The sizes the axis symbols stand for, read from the model."""
    m = model.config
    return {
        "T": T,
        "C": m.n_embd,
        "H": m.n_head,
        "D": m.head_dim,
        "F": mlp_hidden(m),
        "V": m.vocab_size,
        "block": m.block_size,
    }


def axis_size(axis: str, dims: dict[str, int]) -> int:
    """The size of one axis symbol: "C", "3C", "2F", "D/2"."""
    match = re.fullmatch(r"(\d*)([A-Za-z]+)(?:/(\d+))?", axis)
    if not match or match.group(2) not in dims:
        raise ValueError(f"unknown axis {axis!r}")
    factor, name, divisor = match.groups()
    return int(factor or 1) * dims[name] // int(divisor or 1)


@torch.no_grad()
def trace_ids(
    model: GPT,
    tokenizer: Tokenizer,
    ids: list[int],
    position: int | None = None,
    k: int = 10,
    only_position: bool = False,
    recorder: Recorder | None = None,
) -> Trace:
    """Run the model once on ids (at most block_size of them), recording every stage.

    position: where values and candidates are read (default the last, whose next token is the
    prediction); only_position keeps just the values at that position; recorder: one that keeps the
    stages its own way (default: every stage whole).
    """
    T = len(ids)
    position = T - 1 if position is None else position
    recorder = recorder or Recorder(at=position if only_position else None)
    device = next(model.parameters()).device
    with eval_mode(model), recording(model, recorder):
        logits, _ = model(torch.tensor([ids], dtype=torch.long, device=device))
        probs = probs_from_logits(logits)  # the distribution the sampler draws from, temperature 1
        recorder.scoped("", model)("probs", probs, "T V", "softmax of logits over V", "softmax")
    top = top_candidates(tokenizer, probs[0, position].cpu(), k)
    return Trace([(i, tokenizer.id_to_piece(i)) for i in ids], recorder.stages, position, top, dims_of(model, T))


def at_position(stage: Stage, position: int) -> torch.Tensor:
    """A stage's values at one position (its first T axis; for attention, the row of that query)."""
    axes = stage.axes.split()
    assert stage.value is not None, f"stage {stage.name} was not kept"
    if stage.position is not None:  # recorded as that slice alone
        assert stage.position == position, f"stage {stage.name} holds position {stage.position} only"
        return stage.value
    return stage.value.select(axes.index("T"), position) if "T" in axes else stage.value


def finite(values: list) -> list:
    """Nested floats with -inf (a masked score) and NaN as None: JSON has neither."""
    if isinstance(values, list):
        return [finite(v) for v in values]
    return values if isinstance(values, int) or math.isfinite(values) else None


# ---- the page's step-through view ----


def architecture(model: nn.Module, prefix: str = "") -> list[dict[str, Any]]:
    """The model's modules as they are, nested: name (path), module class, a short detail, children."""
    tree = []
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        detail = ""
        if isinstance(child, nn.Linear):
            detail = f"{child.in_features}→{child.out_features}"
        elif isinstance(child, nn.Embedding):
            detail = f"{child.num_embeddings}×{child.embedding_dim}"
        elif isinstance(child, (nn.LayerNorm, nn.RMSNorm)):
            detail = "×".join(map(str, child.normalized_shape))
        elif isinstance(child, nn.ModuleList):
            detail = f"{len(child)}×"
        tree.append(
            {"name": path, "module": type(child).__name__, "detail": detail, "children": architecture(child, path)}
        )
    return tree


def _owner(stage: Stage, modules: dict[str, nn.Module]) -> str:
    """The module a stage belongs to: the deepest whose path starts the stage's name ("" for the model
    itself), or that module's one child of the class that computed it (the model's `logits` are its
    lm_head Linear's output)."""
    parts = stage.name.split(".")
    owner = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), "")
    if type(modules[owner]).__name__ != stage.module:
        prefix = f"{owner}." if owner else ""
        children = [path for path, child in modules[owner].named_children() if type(child).__name__ == stage.module]
        if len(children) == 1:
            return prefix + children[0]
    return owner


def _sample(n: int, most: int) -> list[int]:
    """Up to `most` evenly spread indices of range(n), the first and the last included."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


@dataclass
class StageGrid:
    """One stage's tensor as the page draws it: positions x columns, at most MAX_ROWS x MAX_COLS (positions
    and channels sampled evenly, vocabulary columns the top next tokens), every head kept."""

    rows: list[int]  # the positions shown
    columns: list[dict[str, Any]]  # each column's label (and token id, for vocabulary columns)
    kind: str  # "attention" for T x T maps, else "channels"
    values: torch.Tensor  # (rows, columns), or (heads, rows, columns) for per-head stages; on the CPU


def _grid(stage: Stage) -> StageGrid:
    """A recorded stage's grid; a vocabulary stage keeps every column until the top tokens are known."""
    value, axes = stage.value, stage.axes.split()
    assert value is not None
    t = 1 if axes[0] == "H" else 0  # the position axis; the head axis, if any, stays whole
    body = axes[t:]
    columns: list[dict[str, Any]] = []
    if len(body) == 1:  # one number per position: a single column
        value, columns = value.unsqueeze(-1), [{"label": stage.name.rsplit(".", 1)[-1]}]
    rows = _sample(value.shape[t], MAX_ROWS)
    value = value.index_select(t, torch.tensor(rows, device=value.device))
    if len(body) > 1 and body[1] != "V":
        cols = _sample(value.shape[t + 1], MAX_COLS if body[1] != "T" else MAX_ROWS)
        value = value.index_select(t + 1, torch.tensor(cols, device=value.device))
        columns = [{"label": str(c)} for c in cols]
    return StageGrid(rows, columns, "attention" if body == ["T", "T"] else "channels", value.cpu())


@dataclass
class _GridRecorder(Recorder):
    """A recorder that keeps each stage only as its grid, made as the stage is computed: the whole trace
    of a large model never sits in memory at once."""

    grids: list[StageGrid] = field(default_factory=list)

    def scoped(self, prefix: str, module: nn.Module) -> Callable[..., None]:
        record = super().scoped(prefix, module)

        def record_grid(*args: Any, **kwargs: Any) -> None:
            record(*args, **kwargs)
            self.grids.append(_grid(self.stages[-1]))
            self.stages[-1].value = None

        return record_grid


@dataclass
class TraceRecord:
    """A prompt's step-through view, recorded in one forward pass: what every view shows (tokens, sizes,
    architecture, each stage's statistics, the top next tokens) and every stage's grid, so that any stage
    can be shown again without running the model (view_stage)."""

    overview: dict[str, Any]
    grids: list[StageGrid]

    @property
    def nbytes(self) -> int:
        """The bytes of its grids (what bounds how many records a server keeps)."""
        return sum(g.values.numel() * g.values.element_size() for g in self.grids)


def record_trace(model: GPT, tokenizer: Tokenizer, ids: list[int], k: int = 10) -> TraceRecord:
    """The page's step-through view of ids (at most block_size), recorded once: the architecture, every
    stage's name, operation, shape and statistics, the k most likely next tokens, every stage's grid."""
    recorder = _GridRecorder()
    result = trace_ids(model, tokenizer, ids, None, k, recorder=recorder)
    top = [c.id for c in result.top]
    for stage, grid in zip(result.stages, recorder.grids):
        if stage.axes.split()[-1] == "V":  # the vocabulary: the columns of the most likely next tokens
            grid.values = grid.values[..., top].clone()
            grid.columns = [{"label": c.piece, "id": c.id} for c in result.top]
    modules = dict(model.named_modules())
    overview = {
        "tokens": [{"id": i, "piece": p} for i, p in result.tokens],
        "dims": result.dims,
        "architecture": {"name": "", "module": type(model).__name__, "detail": "", "children": architecture(model)},
        "stages": [
            {
                "index": i,
                "name": s.name,
                "module": s.module,
                "owner": _owner(s, modules),
                "axes": s.axes,
                "op": s.op,
                "shape": list(s.shape),
                "stats": _finite_stats(s.stats),
            }
            for i, s in enumerate(result.stages)
        ],
        "top": [{"id": c.id, "piece": c.piece, "prob": c.prob} for c in result.top],
    }
    return TraceRecord(overview, recorder.grids)


def view_stage(record: TraceRecord, stage: int = 0, head: int = 0) -> dict[str, Any]:
    """The page's view of one stage of a recorded trace: the record's overview, and stage number `stage`
    (one head's, for per-head stages) as a heatmap."""
    if not 0 <= stage < len(record.grids):
        raise GptlabError(f"stage must be in 0..{len(record.grids) - 1}")
    grid = record.grids[stage]
    heads = grid.values.shape[0] if grid.values.dim() == 3 else 0
    if heads and not 0 <= head < heads:
        raise GptlabError(f"head must be in 0..{heads - 1}")
    values = (grid.values[head] if heads else grid.values).float()
    return {
        **record.overview,
        "stage": {
            "index": stage,
            "name": record.overview["stages"][stage]["name"],
            "head": head if heads else None,
            "heads": heads,
            "rows": grid.rows,
            "columns": grid.columns,
            "kind": grid.kind,
            "values": finite([[float(f"{v:.4g}") if math.isfinite(v) else v for v in row] for row in values.tolist()]),
        },
    }


def _finite_stats(stats: dict[str, float]) -> dict[str, float | None]:
    return {key: v if math.isfinite(v) else None for key, v in stats.items()}
