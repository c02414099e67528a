"""Precision policy: how a device computes.

bfloat16 autocast on CUDA devices that support it; float16 autocast with a gradient scaler on
older CUDA devices (float16's narrow exponent range would underflow small gradients without loss
scaling); float32 everywhere else. CPU stays in float32 on purpose: bfloat16 matrix products run
hundreds of times slower on these CPUs.

Apart from device.py (which device a command runs on) so that engines, which are handed a model
already on its device, follow the same policy without importing the command-side device choice.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """How a device computes: the autocast dtype (None: plain float32) and whether losses are scaled."""

    dtype: torch.dtype | None
    grad_scaler: bool

    @property
    def name(self) -> str:
        """'bf16', 'fp16' or 'fp32', as printed at the start of training."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]


@functools.cache  # asked on every micro-step (through autocast); the answer never changes
def precision_for(device: torch.device) -> Precision:
    """The precision policy of a device (see the module docstring)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, grad_scaler=False)
        return Precision(torch.float16, grad_scaler=True)
    return Precision(None, grad_scaler=False)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass, following precision_for(device)."""
    dtype = precision_for(device).dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
