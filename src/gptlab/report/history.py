"""What a run recorded, ready to show: loss and lr series, final losses, samples, data summary.

Reads only files the trainer writes (config.json, metrics.jsonl, samples.txt, data_meta.json),
so it works on a run that is still training and needs no model or torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.config import RunConfig
from gptlab.data.units import bits_per
from gptlab.errors import GptlabError
from gptlab.runs import read_config
from gptlab.train.metrics import read_metrics

METRICS, SAMPLES, DATA_META = "metrics.jsonl", "samples.txt", "data_meta.json"
_SAMPLE_HEADER = re.compile(r"^=== step (\d+) ===\n", re.MULTILINE)


@dataclass
class FinalLoss:
    """The last evaluated loss of one split."""

    split: str
    step: int
    nats: float  # mean cross-entropy per token
    bits_per_byte: float | None  # None when the dataset's byte count is unknown


@dataclass
class RunHistory:
    """Everything a run has recorded so far."""

    path: Path
    config: RunConfig
    metrics: list[dict[str, Any]]
    data_meta: dict[str, Any] | None

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.resolve().name

    def series(self, key: str) -> list[tuple[int, int, float]]:
        """(step, tokens_seen, value) for every record holding key, in step order."""
        return [
            (int(m["step"]), int(m.get("tokens_seen", 0)), float(m[key]))
            for m in self.metrics
            if key in m and m[key] is not None
        ]

    @property
    def has_eval(self) -> bool:
        """Whether the run has been evaluated at least once (val or held-out train loss)."""
        return any("val_loss" in m or "eval_train_loss" in m for m in self.metrics)

    def final_losses(self) -> list[FinalLoss]:
        """The last evaluation's loss per split, in nats and bits per byte; empty before any eval."""
        out = []
        for split, key in (("train", "eval_train_loss"), ("val", "val_loss")):
            points = self.series(key)
            if points:
                step, _, nats = points[-1]
                stats = ((self.data_meta or {}).get("splits") or {}).get(split) or {}
                out.append(FinalLoss(split, step, nats, bits_per(nats, stats, "bytes")))
        return out

    def values(self, key: str) -> list[float]:
        """Every recorded value of key (e.g. tokens_per_sec, mfu), in step order."""
        return [v for _, _, v in self.series(key)]


def read_history(run: str | Path) -> RunHistory:
    """The recorded history of a run, or a clear error if it is not a run or has no metrics yet."""
    path = Path(run)
    cfg = read_config(path)
    try:
        metrics = read_metrics(path / METRICS)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path / METRICS} is corrupt: {exc}") from None
    if not metrics:
        raise GptlabError(
            f"{path} has no metrics yet ({METRICS} is missing or empty); let it train at least one logged step"
        )
    metrics.sort(key=lambda m: m.get("step", 0))
    return RunHistory(path, cfg, metrics, _read_json(path / DATA_META))


def read_samples(run: str | Path) -> list[tuple[int, str]]:
    """(step, text) of each sample in RUN/samples.txt, in step order.

    A resumed run replays steps after its checkpoint and appends their samples again; the last
    block written for a step wins (the replay is the same trajectory).
    """
    path = Path(run) / SAMPLES
    if not path.is_file():
        return []
    parts = _SAMPLE_HEADER.split(path.read_text(encoding="utf-8"))
    by_step = {}
    for step, body in zip(parts[1::2], parts[2::2]):
        # The trainer ends each block with a blank line; the text is what comes before it.
        by_step[int(step)] = body[:-2] if body.endswith("\n\n") else body
    return sorted(by_step.items())


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the data summary is optional: a damaged copy only loses that section
    return data if isinstance(data, dict) else None
