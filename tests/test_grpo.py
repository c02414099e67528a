"""GRPO's objective (posttrain/grpo.py): group-relative advantages and the clipped, KL-penalised loss,
checked against TRL's GRPOTrainer on the same log-probabilities and advantages."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from gptlab.posttrain.grpo import group_advantages, grpo_loss


def _inputs(seed: int = 0, rows: int = 6, width: int = 7):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(rows, width, generator=g) * 3
    old = logps + 0.4 * torch.randn(rows, width, generator=g)  # far enough for the clip to act
    ref = logps + 0.3 * torch.randn(rows, width, generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 6, 2])[:rows]
    mask = torch.arange(width) < lengths[:, None]
    rewards = torch.rand(rows, generator=g)
    return logps, old, ref, rewards, mask


def test_advantages_are_relative_to_the_group():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2])
    a = group_advantages(rewards, 2)
    assert a[0] > 0 > a[1] and a[0].item() == pytest.approx(-a[1].item(), abs=1e-6)
    assert a[2:].abs().max() == 0  # a group of equal rewards teaches nothing
    # Shifting one group's rewards changes nothing: only the differences inside a group count.
    assert torch.allclose(group_advantages(rewards + torch.tensor([3.0, 3, 0, 0, 0, 0]), 2), a)
    # (r - mean) / (sample std + 1e-4): [1, 0] has mean 0.5 and std sqrt(0.5).
    assert a[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-4))


def test_on_policy_gradient_is_the_policy_gradient():
    """With p_old = p (one step per batch of rollouts) and no KL, the gradient of the loss is
    -A x grad log p averaged per answer: answers above their group's mean get more likely."""
    logps, _, ref, rewards, mask = _inputs()
    logps = logps.clone().requires_grad_(True)
    a = group_advantages(rewards, 3)
    grpo_loss(logps, logps.detach(), ref, a, mask, kl=0.0).loss.backward()
    expected = -(a[:, None] * mask) / mask.sum(-1, keepdim=True) / len(a)
    assert torch.allclose(logps.grad, expected, atol=1e-6)


def test_kl_penalty_is_zero_at_the_reference_and_positive_away():
    logps, _, ref, rewards, mask = _inputs()
    a = torch.zeros(len(rewards))
    at_ref = grpo_loss(logps, logps, logps, a, mask, kl=0.5)
    assert at_ref.loss.item() == pytest.approx(0.0, abs=1e-7) and at_ref.kl.item() == pytest.approx(0.0, abs=1e-7)
    away = grpo_loss(logps, logps, ref, a, mask, kl=0.5)
    assert away.kl > 0 and away.loss.item() == pytest.approx(0.5 * _mean_per_answer(_k3(ref, logps), mask))


def _k3(ref: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    return torch.exp(ref - logps) - (ref - logps) - 1


def _mean_per_answer(x: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x * mask).sum(-1) / mask.sum(-1)).mean().item()


def test_padding_never_counts():
    logps, old, ref, rewards, mask = _inputs()
    a = group_advantages(rewards, 2)
    junk = torch.where(mask, 0.0, 1e3)  # wild values where the mask is false
    base = grpo_loss(logps, old, ref, a, mask)
    noisy = grpo_loss(logps + junk, old - junk, ref + junk, a, mask)
    assert noisy.loss.item() == pytest.approx(base.loss.item()) and noisy.kl.item() == pytest.approx(base.kl.item())


# --- TRL's loss on the same numbers -------------------------------------------------------------------------


class _TRLStub:
    """The attributes GRPOTrainer._compute_loss reads, for one process with loss_type="grpo": its own
    code computes the loss, given our per-token log-probabilities instead of a model's."""

    def __init__(self, logps, clip, beta):
        self.loss_type, self.beta, self.epsilon_low, self.epsilon_high = "grpo", beta, clip, clip
        self.importance_sampling_level, self.top_entropy_quantile = "token", 1.0
        self.off_policy_mask_threshold, self.use_vllm, self.aux_loss_enabled = None, False, False
        self._entropy_bonus_enabled = False
        self.current_gradient_accumulation_steps = 1
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None)
        self.model = SimpleNamespace(training=True)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.accelerator = SimpleNamespace(gather=lambda t: t, reduce=lambda t, reduction: t, gather_for_metrics=None)
        self._logps = logps

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        return self._logps, torch.zeros_like(self._logps), None


@pytest.mark.parametrize("clip,beta", [(0.2, 0.04), (0.1, 0.0), (0.3, 0.5)])
def test_matches_trl_grpo_loss(clip, beta):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    logps, old, ref, rewards, mask = _inputs()
    a = group_advantages(rewards, 3)
    ours = grpo_loss(logps, old, ref, a, mask, clip=clip, kl=beta)
    rows, width = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(rows, 2, dtype=torch.long),
        "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
        "completion_ids": torch.zeros(rows, width, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": a,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    stub = _TRLStub(logps, clip, beta)
    theirs = trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    if beta:
        assert ours.kl.item() == pytest.approx(stub._metrics["train"]["kl"][-1], rel=1e-5)
    assert ours.clipped.item() == pytest.approx(stub._metrics["train"]["clip_ratio/region_mean"][-1], rel=1e-5)
    assert ours.clipped > 0  # the clip acted on these numbers


def test_advantages_match_trl_formula():
    """TRL's group scaling: (r - group mean) / (nanstd(group) + 1e-4), nanstd with Bessel's correction."""
    utils = pytest.importorskip("trl.trainer.utils")
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(3))
    groups = rewards.view(-1, 4)
    expected = (groups - groups.mean(1, keepdim=True)) / (utils.nanstd(groups, dim=1).unsqueeze(1) + 1e-4)
    assert torch.allclose(group_advantages(rewards, 4), expected.view(-1), atol=1e-6)
