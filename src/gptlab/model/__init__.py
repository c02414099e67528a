"""Model: the networks, their layers, named presets, and accounting read from a built model."""

from __future__ import annotations

import torch
from torch import nn

from gptlab.config import ModelConfig


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> nn.Module:
    """The one way to make a model from its config (on device; "meta" builds shapes without memory)."""
    from gptlab.model.gpt import GPT

    if device is None:
        return GPT(cfg)
    with torch.device(device):
        return GPT(cfg)
