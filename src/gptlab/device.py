"""Device policy: "auto" picks cuda, then mps, then cpu; any of them can be named instead.

How a device computes (its autocast precision) is precision.py's, which engines read too.
"""

from __future__ import annotations

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
