"""`gptlab step RUN --text TEXT`: take training steps on one window of text, on a copy of the run's model,
and show what they did (train/lesson.py): each target's probability before and after, the loss, the
gradient's norm by layer and the update's size by role. The run on disk is only read."""

from __future__ import annotations

import json
from typing import Any

from gptlab.device import pick_device
from gptlab.train.lesson import Lesson


def take_steps(run: str, text: str | None, steps: int = 1, lr: float | None = None, device: str = "auto") -> dict:
    """`gptlab step`: the lesson's report of `steps` steps on text (None: a random window of the run's
    validation data), or a clear error for bad input."""
    lesson = Lesson(run, pick_device(device))
    ids = lesson.random_window() if text is None else lesson.window_of_text(text)
    return lesson.train(ids, steps, lr)


def _norms_line(title: str, norms: dict[str, float]) -> str:
    return f"{title}: " + ", ".join(f"{name} {value:.3g}" for name, value in norms.items())


def step_table(report: dict[str, Any]) -> list[str]:
    """`gptlab step`: one line per position (input, target, its probability before -> after and the
    change), then the loss, gradient norms by layer and by role, update norms by role."""
    steps = len(report["losses"])
    lines = [
        f"window of {len(report['tokens'])} positions, {steps} step(s) at lr {report['lr']:.3g} "
        f"(run at step {report['run_step']})",
        f"{'pos':>4s}  {'input':10s} {'target':10s} {'p before':>9s} {'p after':>9s} {'change':>9s}  top after",
    ]
    for pos, token in zip(report["positions"], report["tokens"]):
        change = pos["p_after"] - pos["p_before"]
        top = ", ".join(f"{t['piece']!r} {t['prob']:.0%}" for t in pos["top_after"][:3])
        lines.append(
            f"{pos['index']:4d}  {token!r:10s} {pos['piece']!r:10s} {pos['p_before']:9.2%} {pos['p_after']:9.2%} "
            f"{change:+9.2%}  {top}"
        )
    losses = " ".join(f"{loss:.3f}" for loss in report["losses"])
    lines += [
        f"loss over the window: {report['loss_before']:.4f} before -> {report['loss_after']:.4f} after "
        f"(trained on: {losses})",
        _norms_line("gradient norm by layer (last step)", report["grad_norm_by_layer"]),
        _norms_line("gradient norm by role (last step)", report["grad_norm_by_role"]),
        _norms_line("update norm by role (last step)", report["update_norm_by_role"]),
        "the run on disk is unchanged: these steps trained a copy",
    ]
    if report["note"]:
        lines.insert(1, f"note: {report['note']}")
    return lines


def print_step(
    run: str, text: str | None, steps: int = 1, lr: float | None = None, device: str = "auto", as_json: bool = False
) -> None:
    """`gptlab step`: the report as a table, or as one JSON object."""
    report = take_steps(run, text, steps, lr, device)
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print("\n".join(step_table(report)))
