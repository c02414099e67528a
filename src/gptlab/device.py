"""Device and precision policy: cuda, then mps, then cpu; bfloat16 autocast on CUDA, float32 on CPU.

CPU stays in float32 on purpose: bfloat16 matrix products run hundreds of times slower there.
"""

from __future__ import annotations

import contextlib

import torch

from gptlab.errors import GptlabError


def pick_device(name: str = "auto") -> torch.device:
    """The requested device, or the best available one for "auto"."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptlabError(f"device '{name}' requested but CUDA is not available here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GptlabError("device 'mps' requested but MPS is not available here")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: bfloat16 on CUDA, none (float32) elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
