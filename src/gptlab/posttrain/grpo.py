"""Group Relative Policy Optimization (GRPO; Shao et al., 2024, DeepSeekMath): reinforcement learning
with no value model. Each prompt is answered G times by the policy; an answer's advantage is its
reward measured against its own group's:

    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)            (std with Bessel's correction)

and every token of answer i is pushed up or down by A_i through PPO's clipped ratio, held near a
frozen reference by a KL penalty:

    per token   ratio = p(token) / p_old(token)
                loss  = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl * KL
                KL    = ref/p - log(ref/p) - 1                       (the "k3" estimator: unbiased, >= 0)
    per answer  the mean over its tokens; the loss is the mean over answers

This is TRL's GRPOTrainer loss with loss_type="grpo" (a test checks the two agree). gptlab takes one
optimizer step per batch of rollouts, so p_old is the policy itself (detached): the ratio is 1 in
value, and its gradient is the policy gradient A * grad log p; the clip acts only when the same
rollouts are reused for several steps, which gptlab does not do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_EPS = 1e-4  # keeps a group of equal rewards (std 0) at advantage 0 rather than 0/0


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards (N,) of N = prompts x group_size answers, grouped by prompt (a prompt's answers side
    by side), -> each answer's advantage within its group (N,)."""
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((groups - mean) / (std + ADVANTAGE_EPS)).view(-1)


@dataclass
class GRPOLoss:
    """GRPO's loss for one batch of answers and what it says about them."""

    loss: torch.Tensor  # scalar: mean over answers of the mean over their tokens
    kl: torch.Tensor  # scalar: mean k3 KL per answer token (detached)
    clipped: torch.Tensor  # scalar: share of answer tokens whose ratio was clipped (detached)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    kl: float = 0.04,
) -> GRPOLoss:
    """The loss from per-token log-probabilities (B, T) of the answers' tokens under the policy, the
    policy that sampled them and the reference, each answer's advantage (B,), and mask (B, T), true
    on the answer's tokens."""
    keep = mask.bool()
    mask = mask.float()
    a = advantages.float().unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - clip, 1 + clip)
    per_token = -torch.min(ratio * a, clipped_ratio * a)
    delta = ref_logps - logps
    k3 = torch.exp(delta) - delta - 1
    if kl:
        per_token = per_token + kl * k3
    # where, not a product with the mask: whatever stands at a padded position (even inf) adds nothing.
    tokens = mask.sum(-1).clamp(min=1.0)
    loss = (torch.where(keep, per_token, 0.0).sum(-1) / tokens).mean()
    count = mask.sum().clamp(min=1.0)
    was_clipped = (((ratio < 1 - clip) & (a < 0)) | ((ratio > 1 + clip) & (a > 0))) & keep
    return GRPOLoss(loss, (torch.where(keep, k3, 0.0).sum() / count).detach(), (was_clipped.sum() / count).detach())
