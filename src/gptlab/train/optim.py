"""Optimizers and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from gptlab.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only, or plain SGD (w <- w - lr * dL/dw, optional momentum).

    Biases and LayerNorm gains (1-D tensors) are not decayed: shrinking them toward zero does not
    regularise the function, it only fights the normalisation. fused: AdamW's single-kernel update
    (device.fused_adamw says where it pays).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 to lr over warmup_steps, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
