"""Experiment trackers beside RUN/metrics.jsonl (which always stays): TensorBoard or Weights & Biases.

`logger = "tensorboard"` writes event files to RUN/tensorboard (`tensorboard --logdir RUN`);
`logger = "wandb"` logs to a W&B run kept in RUN/wandb, offline unless WANDB_MODE says otherwise
(`wandb sync RUN/wandb/offline-run-*` uploads it later). Every number of every metrics.jsonl record
goes to the tracker under the same name at the same step, so the three views never disagree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from gptlab.errors import GptlabError


class Tracker(Protocol):
    """Receives each metrics record as the JSONL file does."""

    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers other than its step (booleans and text are not metrics)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardTracker:
    """Scalars into RUN/tensorboard through torch's SummaryWriter."""

    def __init__(self, run: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GptlabError(
                "logger='tensorboard' needs the tensorboard package: pip install 'gptlab[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run in RUN/wandb, offline by default (no account or network needed)."""

    def __init__(self, run: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise GptlabError("logger='wandb' needs the wandb package: pip install 'gptlab[wandb]'") from None
        mode: Any = os.environ.get("WANDB_MODE", "offline")  # any string: wandb checks it (the except below)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "gptlab"),
                name=run.resolve().name,
                dir=str(run),
                config=config,
                mode=mode,
                reinit="create_new",
            )
        except Exception as exc:  # wandb raises its own error types (no login, bad mode, no network)
            raise GptlabError(f"logger='wandb' could not start a run: {' '.join(str(exc).split())[:300]}") from None

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


def make_tracker(logger: str, run: Path, config: dict[str, Any]) -> Tracker | None:
    """The tracker a config's `logger` names, or None for "none"."""
    if logger == "tensorboard":
        return TensorBoardTracker(run)
    if logger == "wandb":
        return WandbTracker(run, config)
    return None
