"""The one language-model loss: next-token cross-entropy, with targets that may be left out.

Training, evaluation and (later) fine-tuning all call this, so "the loss" means one thing. A
target equal to IGNORE counts for nothing: padding, or a prompt the model should read but not be
trained to write (a loss mask, see data/batch.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -1


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (..., V) against target ids (...), in float32, over targets != IGNORE.

    reduction "mean" (per counted target), "sum" (nats in all, for averaging over many batches) or
    "none" (each target's nats, 0 where IGNORE).
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction=reduction
    )
