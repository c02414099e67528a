"""`gptlab trace RUN --prompt TEXT`: load a run, check the input, trace one forward pass, print it
as a table (one line per stage) or as one JSON object."""

from __future__ import annotations

import json
import math
from typing import Any

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference.trace import Trace, at_position, finite, trace_ids
from gptlab.model.gpt import GPT
from gptlab.runs import load_run


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
    model = loaded.model
    assert isinstance(model, GPT)  # an encoder–decoder run was refused above
    return trace_ids(model, loaded.tokenizer, ids, position, k, only_position=True)


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
                "values": finite(at_position(s, trace.position).tolist()),
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


def print_trace(
    run: str, prompt: str, position: int | None = None, k: int = 10, device: str = "auto", as_json: bool = False
) -> None:
    """`gptlab trace`: the trace of a prompt as a table, or as one JSON object."""
    trace = trace_prompt(run, prompt, position, k, device)
    if as_json:
        print(json.dumps(trace_json(trace), ensure_ascii=False))
    else:
        print("\n".join(trace_table(trace)))
