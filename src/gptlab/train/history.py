"""A model's history: the weights kept at a thinned series of steps, so a learner can watch the same
prompt's predictions turn from gibberish into text (the page's slider, `gptlab sample --step N`).

The series is 0, 50, 100, 200, 400, 800, ... (each twice the one before) plus the run's last step:
dense where the model changes fastest, and a few files in all (a 10,000-step run keeps 10). It is a
function of the step alone, so a resumed run keeps the same series as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.config import RunConfig
from gptlab.model.accounting import count_params
from gptlab.runs import HISTORY, history_bytes, history_steps

FIRST_KEPT = 50  # the first kept step after 0; each later one doubles it
AUTO_MAX_PARAMS = 20_000_000  # history=auto keeps one below this (the series costs a few tens of MB)


def history_enabled(cfg: RunConfig) -> bool:
    """Whether a run keeps its history: the `history` setting, or when unset (auto) whether the model
    has fewer than AUTO_MAX_PARAMS parameters."""
    if cfg.train.history is not None:
        return cfg.train.history
    return count_params(cfg.model).total < AUTO_MAX_PARAMS


def is_kept(step: int, max_steps: int) -> bool:
    """Whether the weights after `step` optimizer steps belong to the series (0, 50, 100, 200, ...,
    and max_steps)."""
    if step in (0, max_steps):
        return True
    if step < FIRST_KEPT or step % FIRST_KEPT:
        return False
    ratio = step // FIRST_KEPT
    return ratio & (ratio - 1) == 0  # a power of two times FIRST_KEPT


def kept_steps(max_steps: int) -> list[int]:
    """Every step a run of max_steps steps keeps, in order."""
    steps, step = [0], FIRST_KEPT
    while step < max_steps:
        steps.append(step)
        step *= 2
    return steps + ([max_steps] if max_steps > 0 else [])


def history_bytes_estimate(cfg: RunConfig) -> int:
    """What the whole series will cost on disk: one float32 copy of the weights per kept step."""
    return len(kept_steps(cfg.train.max_steps)) * 4 * count_params(cfg.model).total


def describe_history(cfg: RunConfig, run: str | Path | None = None) -> str:
    """One line saying whether a run keeps its history, which steps, where and at what cost."""
    setting = "auto" if cfg.train.history is None else str(cfg.train.history).lower()
    if not history_enabled(cfg):
        why = f"{AUTO_MAX_PARAMS / 1e6:.0f} M parameters or more" if cfg.train.history is None else "off"
        return f"history: none kept (history={setting}: {why}; history=true keeps one)"
    steps = ", ".join(map(str, kept_steps(cfg.train.max_steps)))
    where = f" in {Path(run) / HISTORY}" if run is not None else ""
    return (
        f"history: the weights at steps {steps} are kept{where} "
        f"(about {history_bytes_estimate(cfg) / 1e6:,.1f} MB; history={setting})"
    )


def describe_kept(run: str | Path) -> list[str]:
    """What a run's history holds: the kept steps and their size on disk (in bytes, exactly)."""
    steps = history_steps(run)
    if not steps:
        return ["history: none kept (train with history=true to keep one)"]
    size = history_bytes(run)
    return [
        f"history: {len(steps)} kept steps ({', '.join(map(str, steps))}) in {Path(run) / HISTORY}",
        f"history disk cost: {size:,} bytes ({size / 1e6:,.1f} MB); `gptlab sample {run} --step N` samples one",
    ]
