"""The finite-weight guard: a checkpoint is only written from weights and optimizer state that are
all finite, so a diverged step can never replace the last good checkpoint with NaN.

A step's loss is measured before its update, so a finite loss does not prove the weights it
leaves behind are finite: an update with a huge learning rate can turn every weight into NaN while
the loss that led to it looked fine. Hence this check right before saving.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.train.optim import RoleOptimizer


def _local(tensor: torch.Tensor) -> torch.Tensor:
    # FSDP parameters are DTensors: each rank checks its own shard (the trainer sums the verdicts).
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _optimizers(optimizer: RoleOptimizer | torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    # A composite optimizer (one torch optimizer per parameter role) exposes its parts.
    return optimizer.optimizers if isinstance(optimizer, RoleOptimizer) else [optimizer]


def first_nonfinite(model: nn.Module, optimizer: RoleOptimizer | torch.optim.Optimizer) -> str | None:
    """The name of the first parameter or optimizer-state tensor holding a NaN or an infinity on
    this rank, or None when everything a checkpoint would save is finite."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(_local(param.detach())).all()):
            return f"weight {name}"
    names = {id(p): n for n, p in model.named_parameters()}
    for opt in _optimizers(optimizer):
        for tensor, state in opt.state.items():
            for key, value in state.items():
                if (
                    torch.is_tensor(value)
                    and value.is_floating_point()
                    and not bool(torch.isfinite(_local(value)).all())
                ):
                    return f"optimizer state {key} of {names.get(id(tensor), 'a parameter')}"
    return None


def divergence_message(event: str, step: int, run: object, saved_step: int, lr: float) -> str:
    """One line: what diverged (event, e.g. "the loss became nan"), that nothing was overwritten,
    and what to try."""
    kept = (
        f"the last good checkpoint (step {saved_step}) in {run} is kept"
        if saved_step >= 0
        else f"no checkpoint was written to {run}"
    )
    return (
        f"training diverged at step {step}: {event}; "
        f"nothing was saved and {kept}; try a lower lr (it was {lr:g}) or more warmup_steps"
    )
