"""Device and precision policy.

Device: "auto" picks cuda, then mps, then cpu; any of them can be named instead.
Precision: bfloat16 autocast on CUDA devices that support it; float16 autocast with a gradient
scaler on older CUDA devices (float16's narrow exponent range would underflow small gradients
without loss scaling); float32 everywhere else. CPU stays in float32 on purpose: bfloat16 matrix
products run hundreds of times slower on these CPUs.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """The requested device, or the best available one for "auto"."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptlabError(f"device '{name}' requested but CUDA is not available here")
    if name == "mps" and not _mps_available():
        raise GptlabError("device 'mps' requested but MPS is not available here")
    if not (name in ("cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise GptlabError(f"unknown device '{name}' (known: auto, cpu, cuda, cuda:N, mps)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise GptlabError(f"device '{name}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


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


def configure_backends(device: torch.device) -> None:
    """Let CUDA use TF32 tensor cores for the float32 matmuls that remain outside autocast."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def fused_adamw(device: torch.device) -> bool:
    """Whether AdamW should use its fused kernel: one launch for all parameters on CUDA.

    On CPU the default (for-each) implementation is kept: the optimizer step is a small share of
    a CPU step, and it keeps CPU runs bit-for-bit what they were.
    """
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
