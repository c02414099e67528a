"""Model: the networks, their layers, named presets, and accounting read from a built model."""

from __future__ import annotations

import torch
from torch import nn

from gptlab.config import ModelConfig


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> nn.Module:
    """The one way to make a model from its config (on device; "meta" builds shapes without memory):
    the decoder-only GPT, or the encoder–decoder for arch=encdec."""
    from gptlab.model.encdec import EncoderDecoder
    from gptlab.model.gpt import GPT

    kind = EncoderDecoder if cfg.arch == "encdec" else GPT
    if device is None:
        return kind(cfg)
    with torch.device(device):
        return kind(cfg)
