"""Precision policy: how a device computes.

bfloat16 autocast on CUDA devices that support it; float16 autocast with a gradient scaler on
older CUDA devices (float16's narrow exponent range would underflow small gradients without loss
scaling); float32 everywhere else, unless a run asks (train.precision). On a CPU, precision=auto is
measured, not assumed: CPUs differ by two orders of magnitude here, and products alone mislead. A Xeon
with AMX-BF16 ran the demo's products 2.4x faster in bfloat16 autocast, yet its whole training steps
ran slower (the casts and bfloat16 elementwise work cost more than the products saved at d=128);
earlier CPUs without bfloat16 units ran them hundreds of times slower. So choose_precision times what
decides, a whole forward and backward pass of the model itself, in both, at start-up, and keeps the
faster; weights, optimizer state and the loss stay float32 either way (autocast computes only the
products in bfloat16). race is the timer, shared with Muon's choice of its own precision (train/step.py).

Apart from device.py (which device a command runs on) so that engines, which are handed a model
already on its device, follow the same policy without importing the command-side device choice.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gptlab.config import PrecisionName

# bfloat16 is kept only when it is clearly faster: a near tie is not worth its rounding, and a clear
# margin keeps the choice from flipping between runs with the noise of a busy machine.
BF16_MARGIN = 1.25
MAX_ROWS = 4096  # tokens per timed pass at most: the ratio is what counts, not the total
MAX_TIMED_FLOP = 5e9  # and at most about this much work per pass (6 x params x tokens), so start-up stays short
RACE_SECONDS = 0.6  # a race stops once it has spent this long (after its first timed round)
HOPELESS = 4.0  # bf16 products this many times slower than fp32: not worth timing whole steps


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


@functools.cache  # the CPU's units do not change within a process
def product_check() -> tuple[float, float]:
    """Best seconds of one 256 x 256 x 256 product in float32 and in bfloat16 (alternating, 5 each
    after a warm-up): a few milliseconds that tell a CPU without bfloat16 units."""
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    pairs = {torch.float32: x, torch.bfloat16: x.bfloat16()}
    best = dict.fromkeys(pairs, float("inf"))
    for round_ in range(6):
        for dtype, y in pairs.items():
            start = time.perf_counter()
            y @ y
            if round_:
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32], best[torch.bfloat16]


def race(work: Callable[[torch.dtype], object]) -> tuple[float, float]:
    """Best seconds of work(torch.float32) and of work(torch.bfloat16) on the CPU. Rounds of the two
    alternate and each keeps its best, so a busy machine slows both alike; the first round warms up
    (allocator, kernels built for the shapes) and is not counted. Stops after RACE_SECONDS (at least
    one timed round) or 8 rounds. Where a bare bfloat16 product runs HOPELESS times slower or worse
    (product_check: no bfloat16 units), work is not run and the product's figures are returned: work
    could only lose too, and in bfloat16 it would take seconds there."""
    fp32_s, bf16_s = product_check()
    if bf16_s > HOPELESS * fp32_s:
        return fp32_s, bf16_s
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    spent = 0.0
    for round_ in range(9):
        for dtype in best:
            start = time.perf_counter()
            work(dtype)
            took = time.perf_counter() - start
            if round_:
                best[dtype] = min(best[dtype], took)
            spent += took
        if round_ and spent > RACE_SECONDS:
            break
    return best[torch.float32], best[torch.bfloat16]


def timed_batch(model: nn.Module, batch_size: int, block_size: int) -> tuple[int, int]:
    """(B, T) of the pass time_training_step times: the run's, with fewer rows where a pass would
    exceed MAX_ROWS tokens or MAX_TIMED_FLOP (T shrinks only where one row alone is too much)."""
    params = sum(p.numel() for p in model.parameters())
    rows = max(1, min(batch_size * block_size, MAX_ROWS, int(MAX_TIMED_FLOP / (6 * max(params, 1)))))
    return max(1, min(batch_size, rows // block_size)), min(block_size, rows)


def time_training_step(model: nn.Module, batch_size: int, block_size: int) -> tuple[float, float]:
    """Seconds of one forward and backward pass of a copy of model on the CPU, on random tokens at
    the run's B x T (timed_batch's cap): (float32, bfloat16 autocast), by race. The run's model, its
    gradients and the global random stream (dropout draws from it) are left untouched."""
    cfg: Any = model.config  # a Model's ModelConfig (precision.py does not import the model package)
    B, T = timed_batch(model, batch_size, block_size)
    gen = torch.Generator().manual_seed(0)  # its own stream: timing draws nothing from the run's
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen)
    inputs, targets = data[:, :-1], data[:, 1:]
    extra = {"source": inputs} if getattr(cfg, "arch", "gpt") == "encdec" else {}  # a source as long
    copy = copy_module.deepcopy(model).cpu().train()

    def step(dtype: torch.dtype) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = copy(inputs, targets, **extra)[1]
        loss.backward()
        copy.zero_grad(set_to_none=True)

    with torch.random.fork_rng(devices=[]):
        return race(step)


@dataclass(frozen=True)
class PrecisionChoice:
    """A run's precision setting resolved: name ("fp32", "bf16", or "auto" where the device's policy
    decides) and how it was chosen, for the start-of-training line."""

    name: PrecisionName
    how: str


DEVICE_DEFAULT = PrecisionChoice("auto", "the device's default")


def bf16_if_faster(fp32_s: float, bf16_s: float, what: str) -> PrecisionChoice:
    """bf16 where it ran BF16_MARGIN times as fast as fp32 (seconds of the same work), else fp32; how
    says the measured ratio and `what` was timed."""
    ratio = fp32_s / max(bf16_s, 1e-12)
    name: PrecisionName = "bf16" if ratio >= BF16_MARGIN else "fp32"
    return PrecisionChoice(name, f"auto: bf16 measured {ratio:.2f}x as fast as fp32 at {what}")


def choose_precision(
    setting: PrecisionName,
    device: torch.device,
    model: nn.Module,
    batch_size: int,
    block_size: int,
    measure: Callable[[nn.Module, int, int], tuple[float, float]] | None = None,
) -> PrecisionChoice:
    """Resolve a run's precision setting: as asked, the device's policy off the CPU, and on the CPU for
    "auto" the faster of float32 and bfloat16 autocast at a whole training pass of model at B x T
    (bf16_if_faster). measure(model, B, T) -> (fp32, bf16) seconds: time_training_step unless given."""
    if setting != "auto":
        return PrecisionChoice(setting, "as asked")
    if device.type != "cpu":
        return DEVICE_DEFAULT
    fp32, bf16 = (measure or time_training_step)(model, batch_size, block_size)
    return bf16_if_faster(fp32, bf16, "this model's training step")
