"""A compute sweep: a family of model shapes, each trained by gptlab's own trainer at fixed FLOP budgets.

A budget is a number of training FLOPs, not seconds, so a point does not depend on how busy the
machine was: a shape trains for budget / (FLOPs per token x tokens per step) steps, its FLOPs per
token read from the model itself (model/accounting.py). Each run has its own learning-rate schedule,
fitted to its own length (a point is a finished run, not a snapshot of a longer one).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.config import ModelConfig, RunConfig, build_config
from gptlab.errors import GptlabError
from gptlab.fileio import bounded_lines
from gptlab.model.accounting import count_params, flops_per_token

# Parameters that scale with the vocabulary or the context (token and position embeddings, an
# untied unembedding) are left out of N, as in the scaling-law papers: they are lookups or one
# thin product, and counting them bends the law for small models.
EMBEDDING_PLACES = ("token embedding", "position embedding", "output head")


@dataclass(frozen=True)
class Shape:
    """One size of the family: layers x width (and heads)."""

    n_layer: int
    n_embd: int
    n_head: int

    @property
    def name(self) -> str:
        """'4x128' (layers x width)."""
        return f"{self.n_layer}x{self.n_embd}"

    def overrides(self) -> list[str]:
        """The config overrides that build this shape."""
        return [f"n_layer={self.n_layer}", f"n_embd={self.n_embd}", f"n_head={self.n_head}"]


def parse_shape(text: str) -> Shape:
    """'LxD' or 'LxDxH' -> Shape; heads default to one per 32 channels (at least one)."""
    match = re.fullmatch(r"\s*(\d+)x(\d+)(?:x(\d+))?\s*", text)
    if not match:
        raise GptlabError(f"size {text!r} is not LAYERSxWIDTH or LAYERSxWIDTHxHEADS (e.g. 2x64, 4x128x4)")
    n_layer, n_embd = int(match.group(1)), int(match.group(2))
    n_head = int(match.group(3)) if match.group(3) else max(1, n_embd // 32)
    if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
        raise GptlabError(
            f"size {text!r}: layers, width and heads must be positive and the width divisible "
            f"by the heads ({n_embd} by {n_head})"
        )
    return Shape(n_layer, n_embd, n_head)


def parse_budget(text: str) -> float:
    """'1e12' -> 1e12 training FLOPs (positive, finite)."""
    try:
        value = float(text)
    except ValueError:
        raise GptlabError(f"budget {text!r} is not a number of FLOPs (e.g. 1e12)") from None
    if not (math.isfinite(value) and value > 0):
        raise GptlabError(f"budget {text!r} must be a positive number of FLOPs")
    return value


@dataclass
class Setup:
    """What every run of a sweep shares: the dataset, the recipe and how runs are measured."""

    data: Path  # a prepared dataset directory
    vocab_size: int
    corpus: str = ""  # where the dataset came from, as the user named it (the points file's key, not `data`)
    preset: str = "cpu-modern"
    block_size: int = 64
    batch_size: int = 16
    eval_batches: int = 20
    device: str = "cpu"
    overrides: tuple[str, ...] = ()

    def config(self, shape: Shape, max_steps: int = 1) -> RunConfig:
        """The run config of one shape (validated; bad overrides are refused here, before any training)."""
        cfg = build_config(
            self.preset,
            None,
            [
                *shape.overrides(),
                f"block_size={self.block_size}",
                f"batch_size={self.batch_size}",
                f"vocab_size={self.vocab_size}",
                f"max_steps={max_steps}",
                f"eval_interval={max_steps}",
                f"eval_batches={self.eval_batches}",
                f"eval_batch_size={self.batch_size}",
                f"log_interval={max(1, max_steps // 4)}",
                f"checkpoint_interval={max_steps}",
                "sample_tokens=0",
                f"device={self.device}",
                *self.overrides,
            ],
        )
        cfg.data = str(self.data)
        return cfg

    def signature(self) -> dict[str, Any]:
        """What makes two points comparable (reused from a points file only when this matches)."""
        return {
            "data": self.corpus or str(self.data),
            "preset": self.preset,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "eval_batches": self.eval_batches,
            "overrides": list(self.overrides),
        }


@dataclass
class Sizing:
    """A shape's size and cost, counted from the model it builds."""

    non_embedding_params: int
    total_params: int
    train_flops_per_token: int


def sizing(setup: Setup, shape: Shape) -> Sizing:
    """Count the shape's parameters and training FLOPs per token (model/accounting.py)."""
    model_cfg: ModelConfig = setup.config(shape).model
    counts = count_params(model_cfg)
    embedding = sum(n for place, n in counts.by_place.items() if place in EMBEDDING_PLACES)
    return Sizing(counts.total - embedding, counts.total, flops_per_token(model_cfg)["train"])


def steps_for(setup: Setup, size: Sizing, budget: float) -> int:
    """Optimizer steps that spend `budget` FLOPs (the nearest whole step)."""
    return round(budget / (size.train_flops_per_token * setup.batch_size * setup.block_size))


def run_point(setup: Setup, shape: Shape, budget: float, run_dir: Path, role: str = "fit") -> dict[str, Any]:
    """Train one shape at one budget through the trainer; the point's record (val loss, N, D, C)."""
    from gptlab.train.metrics import read_metrics
    from gptlab.train.trainer import train

    size = sizing(setup, shape)
    steps = steps_for(setup, size, budget)
    if steps < 1:
        raise GptlabError(
            f"budget {budget:.3g} FLOPs is less than one step of {shape.name} "
            f"({size.train_flops_per_token * setup.batch_size * setup.block_size:.3g} FLOPs); "
            "raise the budget or drop the size"
        )
    started = time.perf_counter()
    result = train(setup.config(shape, steps), run_dir)
    wall = time.perf_counter() - started
    records = read_metrics(run_dir / "metrics.jsonl")
    last = [r for r in records if "val_loss" in r][-1]
    tokens = last["tokens_seen"]
    return {
        "role": role,
        "size": shape.name,
        **asdict(shape),
        **asdict(size),
        "budget_flops": budget,
        "steps": result.step,
        "tokens": tokens,
        "flops": tokens * size.train_flops_per_token,
        "val_loss": last["val_loss"],
        "train_loss": last["eval_train_loss"],
        "train_s": last["elapsed_s"],
        "wall_s": round(wall, 2),
        "setup": setup.signature(),
    }


def family_flops(sizes: list[Sizing]) -> Callable[[np.ndarray], np.ndarray]:
    """Training FLOPs per token as a function of N along the family: interpolated in log-log between
    the counted shapes (and extended along the end segments), for the compute-optimal search."""
    pts = sorted({(s.non_embedding_params, s.train_flops_per_token) for s in sizes})
    log_n = np.log([p[0] for p in pts])
    log_f = np.log([p[1] for p in pts])

    def flops(n: np.ndarray) -> np.ndarray:
        x = np.log(n)
        inside = np.interp(x, log_n, log_f)
        left = log_f[0] + (x - log_n[0]) * (log_f[1] - log_f[0]) / (log_n[1] - log_n[0])
        right = log_f[-1] + (x - log_n[-1]) * (log_f[-1] - log_f[-2]) / (log_n[-1] - log_n[-2])
        return np.exp(np.where(x < log_n[0], left, np.where(x > log_n[-1], right, inside)))

    return flops


def read_points(path: Path, signature: dict[str, Any]) -> list[dict[str, Any]]:
    """Points already measured in a points file with the same setup (a line cut short by a kill is skipped)."""
    if not path.is_file():
        return []
    points = []
    with open(path, "rb") as fh:
        for line in bounded_lines(fh, path):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and record.get("setup") == signature and "val_loss" in record:
                points.append(record)
    return points
