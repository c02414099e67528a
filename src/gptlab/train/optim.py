"""Optimizers by parameter role, and the learning-rate schedule.

The model labels each parameter (model.parameter_roles): embedding, output head, hidden matrix,
vector (norm gains, biases). Each role gets its update rule, peak learning rate and weight decay:

    optimizer   hidden matrices         embeddings, head          vectors
    adamw       AdamW, lr, decay        AdamW, their lr, decay    AdamW, vector lr, no decay
    sgd         SGD (momentum), lr      SGD, their lr             SGD, vector lr
    muon        Muon, lr, decay         AdamW, their lr, decay    AdamW, vector lr, no decay

One RoleOptimizer holds the torch optimizers and is stepped, scheduled, clipped, saved and resumed
as one. The schedule gives a factor in [0, 1] of each role's peak rate, so roles keep their ratios.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gptlab.config import TrainConfig
from gptlab.model import Model
from gptlab.train.muon import COEFFICIENTS, make_muon


def role_lr(cfg: TrainConfig, role: str) -> float:
    """Peak learning rate of a role: its own field where set (> 0), else lr."""
    own = {"embedding": cfg.embedding_lr, "head": cfg.head_lr, "vector": cfg.vector_lr}.get(role, 0.0)
    return own or cfg.lr


class RoleOptimizer:
    """Several torch optimizers (one per update rule) stepped, scheduled and saved as one.

    Every param group carries `peak_lr`, its role's peak learning rate; set_lr_factor scales them all.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every group of every optimizer."""
        return [g for o in self.optimizers for g in o.param_groups]

    def set_lr_factor(self, factor: float) -> None:
        """Each group's learning rate := its peak rate x factor (the schedule's value now)."""
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * factor

    def step(self) -> None:
        """One update of every parameter."""
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients."""
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The state of each optimizer, in order."""
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of state_dict (the same roles and rules must be built first)."""
        saved = state["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"saved state holds {len(saved)} optimizer(s), this run builds {len(self.optimizers)}")
        for o, s in zip(self.optimizers, saved):
            o.load_state_dict(s)

    def describe(self) -> str:
        """'muon: 8 tensors, adamw: 13 tensors' for the start-of-training lines."""
        return ", ".join(
            f"{type(o).__name__.lower()}: {sum(len(g['params']) for g in o.param_groups)} tensors"
            for o in self.optimizers
        )


def build_optimizer(model: Model, cfg: TrainConfig, device: torch.device, fused: bool = False) -> RoleOptimizer:
    """The optimizer cfg.optimizer names, over model's parameters grouped by role.

    Vectors are never decayed: shrinking a norm's gain or a bias toward zero does not regularise the
    function, it only fights the normalisation. fused: AdamW's single-kernel update (device.fused_adamw).
    Muon iterates in make_muon's dtype for the device; the run's choice is set later (step.py).
    """
    roles = model.parameter_roles()
    params = dict(model.named_parameters())
    groups: dict[tuple[str, int], list[nn.Parameter]] = {}
    for name, (role, split) in roles.items():
        if params[name].requires_grad:
            groups.setdefault((role, split), []).append(params[name])

    def group(role: str, members: list[nn.Parameter], **extra: Any) -> dict[str, Any]:
        lr = role_lr(cfg, role)
        decay = 0.0 if role == "vector" else cfg.weight_decay
        return {"params": members, "lr": lr, "peak_lr": lr, "weight_decay": decay, "role": role, **extra}

    if cfg.optimizer == "sgd":
        return RoleOptimizer(
            [
                torch.optim.SGD(
                    [group(r, m, weight_decay=0.0) for (r, s), m in groups.items()], lr=cfg.lr, momentum=cfg.momentum
                )
            ]
        )
    optimizers: list[torch.optim.Optimizer] = []
    adam_groups = [group(r, m) for (r, s), m in groups.items() if not (cfg.optimizer == "muon" and r == "matrix")]
    if cfg.optimizer == "muon":
        muon_groups = [group(r, m, split=s) for (r, s), m in groups.items() if r == "matrix"]
        if muon_groups:
            optimizers.append(
                make_muon(
                    muon_groups,
                    device,
                    lr=cfg.lr,
                    momentum=cfg.muon_momentum,
                    weight_decay=cfg.weight_decay,
                    nesterov=True,
                    ns_steps=cfg.muon_ns_steps,
                    ns_coefficients=COEFFICIENTS[cfg.muon_coeffs],
                    normalize=cfg.muon_normalize,
                    cautious_wd=cfg.cautious_wd,
                )
            )
    if adam_groups:
        optimizers.append(torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None))
    return RoleOptimizer(optimizers)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The hidden matrices' learning rate at a step (other roles: the same fraction of their peak).

    cosine: linear warm-up from 0 to lr over warmup_steps, then cosine decay to min_lr at max_steps.
    wsd: warm-up, then lr held until the last decay_fraction of the steps, then linear decay towards
    final_lr_frac x lr (0 by default).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
        left = cfg.max_steps - step  # steps still to take, this one included
        # final_lr_frac=0 computes exactly the plain decay to zero (0 + 1 x r is r to the last bit).
        floor = cfg.final_lr_frac
        return cfg.lr * (floor + (1.0 - floor) * min(1.0, left / decay_steps))
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
