"""Model: the networks, their layers, named presets, and accounting read from a built model."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import torch

from gptlab.config import ModelConfig

if TYPE_CHECKING:
    from gptlab.model.encdec import EncoderDecoder
    from gptlab.model.gpt import GPT

# A model of either architecture (what build_model makes); code that takes both reads only what both define.
Model: TypeAlias = "GPT | EncoderDecoder"


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> Model:
    """The one way to make a model from its config (on device; "meta" builds shapes without memory):
    the decoder-only GPT, or the encoder–decoder for arch=encdec."""
    from gptlab.model.encdec import EncoderDecoder
    from gptlab.model.gpt import GPT

    kind: type[Model] = EncoderDecoder if cfg.arch == "encdec" else GPT
    if device is None:
        return kind(cfg)
    with torch.device(device):
        return kind(cfg)
