"""Training checkpoints: weights plus everything needed to continue the same trajectory.

A checkpoint is one set of files in its own directory (runs.py says where and how a set is made
current atomically):

    model.safetensors   weights (runs.write_weights)
    train_state.pt      optimizer state and torch RNG state: tensors and plain data only, read
                        back with torch.load(weights_only=True), so no pickled code is ever run
    train_state.json    step, tokens seen, elapsed time, the data loader's RNG state, and the world
                        size and grad_accum it was trained with

All three are written into a staging directory that becomes the current set only once every one
is complete, so a crash while saving leaves the previous set whole; resume reads the current set,
or the newest complete one whose checksums match when the current one is damaged.

Weights and optimizer state are always saved whole ("full" state dicts keyed by parameter name),
whether the run was one process, DDP or FSDP-sharded: gathering the shards costs a moment at
save time, and in exchange any world size (or `sample` on one device) can read any checkpoint.
Only rank 0 writes; under FSDP every rank takes part in gathering.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from gptlab.errors import GptlabError
from gptlab.fileio import json_text
from gptlab.model import Model, build_model
from gptlab.runs import (
    STATE_JSON,
    STATE_PT,
    WEIGHTS,
    current_checkpoint,
    load_weights,
    publish_checkpoint,
    save_kept_weights,
    write_weights,
)
from gptlab.train.optim import RoleOptimizer


@dataclass
class TrainState:
    """Where a run stands."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    loader: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1  # processes that trained it; with grad_accum, the global batch in micro-batches
    grad_accum: int = 0  # per process; 0: not recorded (take the config's)


def has_checkpoint(run: str | Path) -> bool:
    """Whether a run directory holds a resumable checkpoint."""
    found = current_checkpoint(run)
    return found is not None and (found / STATE_JSON).is_file()


def _resume_dir(run: str | Path) -> Path:
    """The checkpoint set a resume reads: the current one, or the newest intact one."""
    found = current_checkpoint(run, verify=True)
    if found is None:
        raise GptlabError(f"{run} has no complete checkpoint ({STATE_JSON} missing)")
    return found


def fallback_note(run: str | Path) -> str | None:
    """A line saying why resume takes an older set than the current one, when it does."""
    current, intact = current_checkpoint(run), _resume_dir(run)
    if current is None or current == intact:
        return None
    return f"note: {current.name} is damaged or incomplete; resuming from {intact.name}, the newest intact checkpoint"


def read_state(run: str | Path) -> TrainState:
    """train_state.json alone (what a resume needs to know before building anything)."""
    path = _resume_dir(run) / STATE_JSON
    try:
        state = TrainState(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise GptlabError(f"{run} has no complete checkpoint ({STATE_JSON} missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise GptlabError(f"corrupt checkpoint in {run}: {STATE_JSON}: {exc}") from None
    if not isinstance(state.step, int) or state.step < 0 or not isinstance(state.loader, dict):
        raise GptlabError(
            f"corrupt checkpoint in {run}: {STATE_JSON}: step={state.step!r} "
            "must be an integer >= 0 and loader an object"
        )
    return state


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_checkpoint(
    run: str | Path,
    model: Model,
    optimizer: RoleOptimizer,
    state: TrainState,
    scaler: torch.amp.GradScaler | None = None,
    sharded: bool = False,
    is_main: bool = True,
    keep: int = 1,
) -> None:
    """Write weights, optimizer/RNG state and the train state as one new checkpoint set and make it
    current (on rank 0), keeping the newest `keep` sets.

    model is the model itself (sharded in place when sharded=True), never a DDP or compile wrapper.
    """
    run = Path(run)
    _reshard(model, sharded)
    optim_state = get_optimizer_state_dict(model, optimizer.optimizers, options=_FULL)
    whole = _whole(model, sharded, is_main)
    if whole is None:  # not rank 0
        return
    model = whole
    blob = {"step": state.step, "optimizer": optim_state, "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        blob["cuda_rng"] = torch.cuda.get_rng_state_all()
    if scaler is not None:
        blob["grad_scaler"] = scaler.state_dict()

    def write(directory: Path) -> list[str]:
        write_weights(model, directory / WEIGHTS, state.step)
        torch.save(blob, directory / STATE_PT)
        (directory / STATE_JSON).write_text(json_text(asdict(state)), encoding="utf-8")
        return [WEIGHTS, STATE_PT, STATE_JSON]

    publish_checkpoint(run, state.step, write, keep)


def _reshard(model: Model, sharded: bool) -> None:
    """A forward pass without backward (evaluation, sampling) leaves an FSDP root's parameters gathered;
    put every module back to its shards so parameters match the optimizer's."""
    if not sharded:
        return
    for module in model.modules():
        reshard = getattr(module, "reshard", None)  # fully_shard adds it to the modules it shards
        if reshard is not None:
            reshard()


def _whole(model: Model, sharded: bool, is_main: bool) -> Model | None:
    """The whole model on rank 0 (every rank calls: FSDP gathers the shards onto rank 0's CPU into a
    fresh copy), None on the other ranks."""
    if not sharded:
        return model if is_main else None
    full = get_model_state_dict(model, options=_FULL)
    if not is_main:
        return None
    with torch.random.fork_rng(devices=[]):  # building a model draws an init: keep the dropout stream
        whole = build_model(model.config)
    whole.load_state_dict(full)
    return whole


def save_history(run: str | Path, model: Model, step: int, sharded: bool = False, is_main: bool = True) -> None:
    """Keep the weights at `step` in the run's history (train/history.py); every rank calls (FSDP gathers),
    rank 0 writes."""
    _reshard(model, sharded)
    whole = _whole(model, sharded, is_main)
    if whole is not None:
        save_kept_weights(whole, run, step)


def load_weights_for_resume(run: str | Path, model: Model) -> int:
    """Load the checkpoint's weights into an unwrapped model (before DDP or FSDP); return their step."""
    return load_weights(model, _resume_dir(run) / WEIGHTS)


def load_checkpoint(
    run: str | Path,
    model: Model,
    optimizer: RoleOptimizer,
    weights_step: int,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainState:
    """Restore optimizer, scaler and RNG state in place (weights were loaded by load_weights_for_resume);
    return the train state. Every rank reads the files; FSDP ranks keep their shard of the optimizer state."""
    run = Path(run)
    try:
        state = read_state(run)
        blob = torch.load(_resume_dir(run) / STATE_PT, map_location="cpu", weights_only=True)
        # Kernel choices (fused, foreach) belong to this device, not to the one that saved.
        kernels: list[dict[str, Any]] = [
            {k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups
        ]
        set_optimizer_state_dict(
            model, optimizer.optimizers, blob["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        for group, chosen in zip(optimizer.param_groups, kernels):
            group.update(chosen)
    except FileNotFoundError as exc:
        raise GptlabError(f"{run} has no complete checkpoint ({Path(exc.filename).name} missing)") from None
    except (TypeError, KeyError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise GptlabError(
            f"corrupt checkpoint in {run}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if not (weights_step == state.step == blob["step"]):
        raise GptlabError(
            f"corrupt checkpoint in {run}: its files disagree on the step "
            f"(weights {weights_step}, optimizer {blob['step']}, state {state.step})"
        )
    torch.set_rng_state(blob["torch_rng"])
    if "cuda_rng" in blob and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"][: torch.cuda.device_count()])
    if scaler is not None and "grad_scaler" in blob:
        scaler.load_state_dict(blob["grad_scaler"])
    return state
