"""A training batch: what the loader hands the trainer, one object from loader to prefetch to step.

inputs are B windows of T token ids and targets the same windows shifted by one (each position
predicts the next token). loss_mask, where given, says which targets count: fine-tuning counts
only the answer's tokens, never the prompt's. An encoder–decoder's batch also carries the source
ids it reads (right-padded) and source_mask, True on the source's real tokens.

pad_rows() is the one right-padding of rows of different lengths (pairs, chat records, the
engine's prompts): each row keeps positions 0, 1, ... as if alone, and a mask says which are real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gptlab.model.loss import IGNORE


def pad_rows(
    rows: Sequence[Sequence[int | bool]],
    fill: int | bool = 0,
    dtype: torch.dtype = torch.long,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths right-padded with fill to the longest, (B, longest) of dtype, and
    the (B, longest) boolean mask of the real (unpadded) positions."""
    width = max((len(row) for row in rows), default=0)
    padded = torch.tensor([[*row, *[fill] * (width - len(row))] for row in rows], dtype=dtype, device=device)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    real = torch.arange(width, device=device) < lengths[:, None]
    return padded.view(len(rows), width), real  # view: no rows at all is (0, 0), not (0,)


@dataclass
class Batch:
    """Inputs (B, T), targets (B, T), an optional boolean loss mask (B, T), and for an encoder–decoder
    the source (B, S) with its mask (B, S)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor | None = None
    source: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        def maybe(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)

        return Batch(
            fn(self.inputs), fn(self.targets), maybe(self.loss_mask), maybe(self.source), maybe(self.source_mask)
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """The same batch on a device (non_blocking: the copy may overlap queued device work)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """The same batch in page-locked host memory (fast, asynchronous copies to a GPU)."""
        return self._map(lambda t: t.pin_memory())

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """What the model reads besides inputs and targets: an encoder–decoder's source and its mask."""
        return {} if self.source is None else {"source": self.source, "source_mask": self.source_mask}

    def loss_targets(self) -> torch.Tensor:
        """Targets with the masked-out positions set to IGNORE, as the loss takes them."""
        if self.loss_mask is None:
            return self.targets
        return self.targets.masked_fill(~self.loss_mask.bool(), IGNORE)
