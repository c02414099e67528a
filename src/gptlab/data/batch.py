"""A training batch: what the loader hands the trainer, one object from loader to prefetch to step.

inputs are B windows of T token ids and targets the same windows shifted by one (each position
predicts the next token). loss_mask, where given, says which targets count: fine-tuning counts
only the answer's tokens, never the prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.model.loss import IGNORE


@dataclass
class Batch:
    """Inputs (B, T), targets (B, T) and an optional boolean loss mask (B, T)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        """The same batch on a device (non_blocking: the copy may overlap queued device work)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.inputs), move(self.targets), move(self.loss_mask))

    def pin_memory(self) -> "Batch":
        """The same batch in page-locked host memory (fast, asynchronous copies to a GPU)."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(pin(self.inputs), pin(self.targets), pin(self.loss_mask))

    def loss_targets(self) -> torch.Tensor:
        """Targets with the masked-out positions set to IGNORE, as the loss takes them."""
        if self.loss_mask is None:
            return self.targets
        return self.targets.masked_fill(~self.loss_mask.bool(), IGNORE)
