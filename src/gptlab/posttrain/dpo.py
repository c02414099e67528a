"""Direct Preference Optimization (Rafailov et al., 2023): prefer the chosen answer over the
rejected one more than a frozen reference model does, with no reward model and no sampling.

    loss = -log sigmoid(beta * [(log p(chosen) - log ref(chosen)) - (log p(rejected) - log ref(rejected))])

log p(answer) sums the answer tokens' log-probabilities (the loss mask picks them). While the
policy equals the reference the bracket is 0 and the loss is ln 2; beta sets how far the policy
may move from the reference for a given preference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.data.batch import Batch
from gptlab.model.loss import lm_loss


def answer_logps(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Sum over each row's counted targets of log p(target): (rows,) in float32 (the one language-model
    loss, per target: uncounted targets are IGNORE and add nothing)."""
    targets = batch.loss_targets()
    return -lm_loss(logits, targets, reduction="none").view(targets.shape).sum(-1)


@dataclass
class Preference:
    """DPO's loss and what it says about the pairs of one batch."""

    loss: torch.Tensor  # mean over pairs
    margin: torch.Tensor  # mean implicit reward of chosen minus rejected (beta x log-ratio difference)
    accuracy: torch.Tensor  # share of pairs whose chosen answer has the higher implicit reward


def dpo(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> Preference:
    """DPO on rows [chosen..., rejected...] of log-probabilities under the policy and the reference."""
    rewards = beta * (policy_logps - reference_logps)
    chosen, rejected = rewards.chunk(2)
    z = chosen - rejected
    return Preference(-F.logsigmoid(z).mean(), z.mean(), (z > 0).float().mean())


class DPOObjective:
    """The trainer's objective for alignment: DPO against a frozen reference model."""

    def __init__(self, reference: nn.Module, beta: float):
        self.reference, self.beta = reference.eval().requires_grad_(False), beta

    def measure(self, policy: nn.Module, batch: Batch) -> Preference:
        """DPO's loss, margin and accuracy for a batch of pairs."""
        logits, _ = policy(batch.inputs)
        with torch.no_grad():
            ref_logits, _ = self.reference(batch.inputs)
        return dpo(answer_logps(logits, batch), answer_logps(ref_logits, batch), self.beta)

    def __call__(self, policy: nn.Module, batch: Batch) -> torch.Tensor:
        return self.measure(policy, batch).loss
