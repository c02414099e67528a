"""Precision policy: how a device computes.

bfloat16 autocast on CUDA devices that support it; float16 autocast with a gradient scaler on
older CUDA devices (float16's narrow exponent range would underflow small gradients without loss
scaling); float32 everywhere else, unless a run asks (train.precision). On a CPU, precision=auto is
measured, not assumed: CPUs differ by two orders of magnitude here. A Xeon with AMX-BF16 ran the demo's
products (768 x 128 x 512) 2.4x faster in bfloat16 autocast and Muon's orthogonalisation 3-4x faster
(2026-12-05, under load); earlier CPUs without bfloat16 units ran them hundreds of times slower.
choose_precision times both at the model's own products at start-up and keeps the faster; weights,
optimizer state and the loss stay float32 either way (autocast computes only the products in bfloat16).

Apart from device.py (which device a command runs on) so that engines, which are handed a model
already on its device, follow the same policy without importing the command-side device choice.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gptlab.config import PrecisionName

# bfloat16 is kept only when it is clearly faster: a near tie is not worth its rounding, and a clear
# margin keeps the choice from flipping between runs with the noise of a busy machine.
BF16_MARGIN = 1.25
MAX_ROWS = 4096  # products timed with at most this many rows: the ratio is what counts, not the total


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
def precision_for(device: torch.device, name: str = "auto") -> Precision:
    """The precision of a device for a run's setting name ("auto", "fp32", "bf16"; see the module
    docstring). "auto" off CUDA is float32: a CPU run's auto is resolved first (choose_precision)."""
    if name == "fp32":
        return Precision(None, grad_scaler=False)
    if device.type == "cuda":
        if name == "bf16" or torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, grad_scaler=False)
        return Precision(torch.float16, grad_scaler=True)
    if name == "bf16":
        return Precision(torch.bfloat16, grad_scaler=False)
    return Precision(None, grad_scaler=False)


def autocast(device: torch.device, name: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass, following precision_for(device, name)."""
    dtype = precision_for(device, name).dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def product_shapes(model: nn.Module, rows: int) -> tuple[tuple[int, int, int], ...]:
    """(rows, in, out) of each distinct linear layer of model: the products one forward pass of
    `rows` tokens makes (rows capped at MAX_ROWS)."""
    rows = min(rows, MAX_ROWS)
    return tuple(sorted({(rows, m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)}))


@functools.cache  # one measurement per shapes in a process: every run of a model alike agrees
def time_products(shapes: tuple[tuple[int, int, int], ...]) -> tuple[float, float]:
    """Seconds for one round of the products `shapes` on the CPU: (float32, bfloat16 autocast, the
    casts it makes included). Rounds of the two alternate, and each keeps its best, so a busy
    machine slows both alike; about 0.3 s in all."""
    gen = torch.Generator().manual_seed(0)  # its own stream: timing draws nothing from the run's
    pairs = [(torch.randn(r, i, generator=gen), torch.randn(o, i, generator=gen)) for r, i, o in shapes]
    contexts: dict[torch.dtype | None, Callable[[], contextlib.AbstractContextManager]] = {
        None: contextlib.nullcontext,
        torch.bfloat16: lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    best = dict.fromkeys(contexts, float("inf"))
    spent = 0.0
    with torch.no_grad():
        for round_ in range(100):
            for dtype, context in contexts.items():
                with context():
                    start = time.perf_counter()
                    for x, w in pairs:
                        torch.nn.functional.linear(x, w)
                    took = time.perf_counter() - start
                if round_ > 1:  # the first rounds warm up (allocator, kernels built for the shapes)
                    best[dtype] = min(best[dtype], took)
                spent += took
            if round_ >= 5 and spent > 0.3:
                break
    return best[None], best[torch.bfloat16]


@dataclass(frozen=True)
class PrecisionChoice:
    """A run's precision setting resolved: name ("fp32", "bf16", or "auto" where the device's policy
    decides) and how it was chosen, for the start-of-training line."""

    name: PrecisionName
    how: str


DEVICE_DEFAULT = PrecisionChoice("auto", "the device's default")


def choose_precision(
    setting: PrecisionName,
    device: torch.device,
    shapes: tuple[tuple[int, int, int], ...],
    measure: Callable[[tuple[tuple[int, int, int], ...]], tuple[float, float]] | None = None,
) -> PrecisionChoice:
    """Resolve a run's precision setting: as asked, the device's policy off the CPU, and on the CPU for
    "auto" the faster of float32 and bfloat16 autocast at the model's products `shapes` (bfloat16 only
    when BF16_MARGIN times faster). measure(shapes) -> (fp32, bf16) seconds: time_products unless given."""
    if setting != "auto":
        return PrecisionChoice(setting, "as asked")
    if device.type != "cpu" or not shapes:
        return DEVICE_DEFAULT
    fp32, bf16 = (measure or time_products)(shapes)
    ratio = fp32 / max(bf16, 1e-12)
    name: PrecisionName = "bf16" if ratio >= BF16_MARGIN else "fp32"
    return PrecisionChoice(name, f"auto: bf16 measured {ratio:.2f}x as fast as fp32 at this model's products")
