"""Training checkpoints: weights plus everything needed to continue the same trajectory.

    model.safetensors   weights (runs.save_weights)
    train_state.pt      optimizer state and torch RNG state: tensors and plain data only, read
                        back with torch.load(weights_only=True), so no pickled code is ever run
    train_state.json    step, tokens seen, elapsed time, the data loader's RNG state

Each file is written atomically; train_state.json is written last and names the step, so a crash
between files is detected on resume (the steps disagree) rather than silently mixing states.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write, atomic_write_json
from gptlab.runs import WEIGHTS, load_weights, save_weights

STATE_PT, STATE_JSON = "train_state.pt", "train_state.json"


@dataclass
class TrainState:
    """Where a run stands."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    loader: dict[str, Any] = field(default_factory=dict)


def has_checkpoint(run: str | Path) -> bool:
    """Whether a run directory holds a resumable checkpoint."""
    return (Path(run) / STATE_JSON).is_file()


def save_checkpoint(run: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainState) -> None:
    """Write weights, optimizer/RNG state and the train state, each atomically."""
    run = Path(run)
    save_weights(model, run / WEIGHTS, state.step)
    blob = {"step": state.step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        blob["cuda_rng"] = torch.cuda.get_rng_state_all()
    atomic_write(run / STATE_PT, lambda tmp: torch.save(blob, tmp))
    atomic_write_json(run / STATE_JSON, asdict(state))


def load_checkpoint(run: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore model, optimizer and RNG state in place; return the train state."""
    run = Path(run)
    try:
        state = TrainState(**json.loads((run / STATE_JSON).read_text(encoding="utf-8")))
        blob = torch.load(run / STATE_PT, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
    except FileNotFoundError as exc:
        raise GptlabError(f"{run} has no complete checkpoint ({Path(exc.filename).name} missing)") from None
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, RuntimeError, EOFError) as exc:
        raise GptlabError(f"corrupt checkpoint in {run}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    weights_step = load_weights(model, run / WEIGHTS)
    if not (weights_step == state.step == blob["step"]):
        raise GptlabError(f"corrupt checkpoint in {run}: its files disagree on the step "
                          f"(weights {weights_step}, optimizer {blob['step']}, state {state.step})")
    torch.set_rng_state(blob["torch_rng"])
    if "cuda_rng" in blob and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return state
