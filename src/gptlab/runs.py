"""A run directory: what a training run leaves behind and what `sample`, `eval` and `serve` read.

    RUN/config.json        the RunConfig (model shape, training settings, dataset path)
    RUN/tokenizer.json     the tokenizer, so nothing needs the corpus again
    RUN/model.safetensors  weights (no pickled code), with the step in its metadata
    RUN/train_state.*      optimizer, RNG and data-order state for an exact resume (train/checkpoint.py)
    RUN/metrics.jsonl      one JSON object per logged step
    RUN/samples.txt        continuations of the sample prompt taken during training
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from gptlab.config import RunConfig
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write
from gptlab.model import build_model
from gptlab.model.gpt import GPT
from gptlab.tokenizers import Tokenizer, load_tokenizer

CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"


@dataclass
class LoadedRun:
    """A trained model ready for inference."""

    path: Path
    config: RunConfig
    tokenizer: Tokenizer
    model: GPT
    step: int


def read_config(run: str | Path) -> RunConfig:
    """The RunConfig of a run directory, or a clear error if it is not one."""
    path = Path(run)
    if not (path / CONFIG).is_file():
        raise GptlabError(f"{path} is not a gptlab run (no {CONFIG}); train one with `gptlab train`")
    try:
        return RunConfig.from_dict(json.loads((path / CONFIG).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise GptlabError(f"{path / CONFIG} is corrupt: {exc}") from None


def save_weights(model: GPT, path: str | Path, step: int) -> None:
    """Write model.safetensors atomically (tied weights stored once)."""
    atomic_write(path, lambda tmp: write_weights(model, tmp, step))


def write_weights(model: GPT, path: str | Path, step: int) -> None:
    """Write weights to path as it is (callers make it atomic), with the step in the metadata."""
    save_model(model, str(path), metadata={"step": str(step)})


def load_weights(model: GPT, path: str | Path) -> int:
    """Load weights saved by save_weights into model; return the step they were saved at."""
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path.parent} has no weights ({path.name}); has it trained a step yet?")
    try:
        missing, unexpected = load_model(model, path, strict=False)
        if missing or unexpected:
            raise GptlabError(f"{path} does not match the run's config "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return int((f.metadata() or {}).get("step", 0))
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise GptlabError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0]}") from None


def load_run(run: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Config, tokenizer and weights of a run, the model in eval mode on device."""
    path = Path(run)
    cfg = read_config(path)
    tokenizer = load_tokenizer(path / TOKENIZER)
    model = build_model(cfg.model)
    step = load_weights(model, path / WEIGHTS)
    model.to(device).eval()
    return LoadedRun(path, cfg, tokenizer, model, step)
