"""The trace of one forward pass: every intermediate from token ids to next-token probabilities.

The model runs once in recording mode (model/record.py): each module hands over the tensors it
computes, so the stages, their names and their order are the model's own (a modern variant shows
RMSNorm, RoPE, QK-norm, its MLP's activation). The trace adds only the last stage, `probs`: the
softmax the sampler applies to the logits.

    trace_ids      ids -> Trace (every stage, the top candidates at one position)
    trace_prompt   `gptlab trace RUN --prompt TEXT`: load, check the input, trace
    trace_table / trace_json   the command's two outputs
    trace_view     the page's step-through view: the stage list with statistics and one stage's
                   tensor as a heatmap, sampled to a bounded size (a gpt2-small trace stays small)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference.engine import eval_mode
from gptlab.inference.probs import Candidate, top_candidates
from gptlab.inference.sampling import probs_from_logits
from gptlab.model.gpt import GPT
from gptlab.model.record import Recorder, Stage, recording
from gptlab.runs import load_run
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
        "F": model.blocks[0].mlp.proj.in_features if len(model.blocks) else 0,
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
    keep: Callable[[int, str], bool] | None = None,
    only_position: bool = False,
) -> Trace:
    """Run the model once on ids (at most block_size of them), recording every stage.

    position: where values and candidates are read (default the last, whose next token is the
    prediction); keep(index, name) limits which stages keep their tensor (statistics are always kept);
    only_position keeps just the values at that position.
    """
    T = len(ids)
    position = T - 1 if position is None else position
    recorder = Recorder(at=position if only_position else None)
    if keep is not None:
        recorder.keep = keep
    device = next(model.parameters()).device
    with eval_mode(model), recording(model, recorder):
        logits, _ = model(torch.tensor([ids], dtype=torch.long, device=device))
        probs = probs_from_logits(logits)  # the distribution the sampler draws from, temperature 1
        recorder.scoped("", model)("probs", probs, "T V", "softmax of logits over V", "softmax")
    top = top_candidates(tokenizer, probs[0, position].cpu(), k)
    return Trace([(i, tokenizer.id_to_piece(i)) for i in ids], recorder.stages, position, top, dims_of(model, T))


def trace_prompt(run: str, prompt: str, position: int | None = None, k: int = 10, device: str = "auto") -> Trace:
    """`gptlab trace`: the trace of a prompt through a run's model, or a clear error for bad input."""
    if not prompt:
        raise GptlabError("the prompt is empty: give at least one character with --prompt")
    if k < 0:
        raise GptlabError(f"--top {k} must be 0 or more")
    loaded = load_run(run, pick_device(device))
    if loaded.config.model.arch != "gpt":
        raise GptlabError(
            f"{run} is an encoder–decoder run (arch={loaded.config.model.arch}); gptlab trace follows "
            "a decoder-only GPT's prediction (the page shows this run's cross-attention)"
        )
    ids = loaded.tokenizer.encode(prompt)
    block = loaded.config.model.block_size
    if len(ids) > block:
        raise GptlabError(f"the prompt is {len(ids)} tokens; this model reads at most block_size={block}")
    if position is not None and not 0 <= position < len(ids):
        raise GptlabError(
            f"--position {position} is out of range: the prompt has {len(ids)} tokens (0..{len(ids) - 1})"
        )
    return trace_ids(loaded.model, loaded.tokenizer, ids, position, k, only_position=True)


def at_position(stage: Stage, position: int) -> torch.Tensor:
    """A stage's values at one position (its first T axis; for attention, the row of that query)."""
    axes = stage.axes.split()
    assert stage.value is not None, f"stage {stage.name} was not kept"
    if stage.position is not None:  # recorded as that slice alone
        assert stage.position == position, f"stage {stage.name} holds position {stage.position} only"
        return stage.value
    return stage.value.select(axes.index("T"), position) if "T" in axes else stage.value


def _finite(values: list) -> list:
    """Nested floats with -inf (a masked score) and NaN as None: JSON has neither."""
    if isinstance(values, list):
        return [_finite(v) for v in values]
    return values if isinstance(values, int) or math.isfinite(values) else None


def trace_json(trace: Trace) -> dict[str, Any]:
    """`gptlab trace --json`: tokens, every stage (values at the chosen position) and the top candidates."""
    return {
        "tokens": [{"id": i, "piece": p} for i, p in trace.tokens],
        "position": trace.position,
        "dims": trace.dims,
        "stages": [
            {
                "name": s.name,
                "module": s.module,
                "axes": s.axes,
                "op": s.op,
                "shape": list(s.shape),
                "values": _finite(at_position(s, trace.position).tolist()),
                "stats": s.stats,
            }
            for s in trace.stages
        ],
        "top": [{"id": c.id, "piece": c.piece, "prob": c.prob} for c in trace.top],
    }


def _fmt(x: float) -> str:
    return "-inf" if x == -math.inf else f"{x:.4g}"


def trace_table(trace: Trace, width: int = 4) -> list[str]:
    """`gptlab trace`: one line per stage (name, module, shape, the first values at the position,
    statistics), then the top candidates."""
    pos = trace.position
    pieces = " ".join(f"{i}:{p!r}" for i, p in trace.tokens)
    lines = [
        f"tokens ({len(trace.tokens)}): {pieces}",
        f"values at position {pos} ({trace.tokens[pos][1]!r}); sizes: "
        + ", ".join(f"{k}={v}" for k, v in trace.dims.items()),
        f"{'stage':34s} {'module':20s} {'shape':16s} {'values at position':42s} "
        f"{'mean':>9s} {'std':>9s} {'min':>9s} {'max':>9s}",
    ]
    for s in trace.stages:
        flat = at_position(s, pos).flatten().tolist()
        shown = ", ".join(_fmt(v) for v in flat[:width]) + (", …" if len(flat) > width else "")
        shape = "×".join(str(n) for n in s.shape) or "1"
        stats = " ".join(f"{_fmt(s.stats[key]):>9s}" for key in ("mean", "std", "min", "max"))
        lines.append(f"{s.name:34s} {s.module:20s} {s.axes + ' ' + shape:16s} {'[' + shown + ']':42s} {stats}")
    lines.append(
        f"next token after position {pos}: " + ", ".join(f"{c.piece!r} (id {c.id}) {c.prob:.2%}" for c in trace.top)
    )
    return lines


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


def heatmap(trace: Trace, index: int, head: int) -> dict[str, Any]:
    """One stage's tensor as positions × columns (one head's for per-head stages), at most
    MAX_ROWS × MAX_COLS: positions and channels sampled evenly, vocabulary columns the top tokens."""
    stage = trace.stages[index]
    value, axes = stage.value, stage.axes.split()
    assert value is not None
    heads = 0
    if axes[0] == "H":
        heads = value.shape[0]
        value, axes = value[head], axes[1:]
    if len(axes) == 1:  # one number per position: a single column
        value = value[:, None]
        columns = [{"label": stage.name.rsplit(".", 1)[-1]}]
        cols = [0]
    elif axes[1] == "V":  # the vocabulary: the columns of the most likely next tokens
        cols = [c.id for c in trace.top]
        columns = [{"label": c.piece, "id": c.id} for c in trace.top]
    else:
        cols = _sample(value.shape[1], MAX_COLS if axes[1] != "T" else MAX_ROWS)
        columns = [{"label": str(c)} for c in cols]
    rows = _sample(value.shape[0], MAX_ROWS)
    grid = value[rows][:, cols].float()
    return {
        "index": index,
        "name": stage.name,
        "head": head if heads else None,
        "heads": heads,
        "rows": rows,
        "columns": columns,
        "kind": "attention" if axes == ["T", "T"] else "channels",
        "values": _finite([[float(f"{v:.4g}") if math.isfinite(v) else v for v in row] for row in grid.tolist()]),
    }


def trace_view(
    model: GPT, tokenizer: Tokenizer, ids: list[int], stage: int = 0, head: int = 0, k: int = 10
) -> dict[str, Any]:
    """The page's step-through view of ids (at most block_size): the architecture, every stage's name,
    operation, shape and statistics, the top next tokens, and stage number `stage` as a heatmap.

    Only that stage's tensor is kept while tracing, so a large model's trace stays small.
    """
    result = trace_ids(model, tokenizer, ids, None, k, keep=lambda index, name: index == stage)
    if not 0 <= stage < len(result.stages):
        raise GptlabError(f"stage must be in 0..{len(result.stages) - 1}")
    chosen = result.stages[stage]
    heads = chosen.shape[0] if chosen.axes.split()[0] == "H" else 0
    if heads and not 0 <= head < heads:
        raise GptlabError(f"head must be in 0..{heads - 1}")
    modules = dict(model.named_modules())
    return {
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
        "stage": heatmap(result, stage, head),
    }


def _finite_stats(stats: dict[str, float]) -> dict[str, float | None]:
    return {key: v if math.isfinite(v) else None for key, v in stats.items()}
