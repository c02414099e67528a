"""Throughput in FLOPs: the device's peak, and model FLOP utilisation (MFU).

MFU = (tokens/s x training FLOPs per token) / peak FLOP/s. The FLOPs per token come from the model's
shape (model/accounting.py), not from counting what the kernels did, so recomputation or padding
never inflates it. The peak is the datasheet dense bf16 figure on known GPUs; on a CPU no datasheet
number means much (cores, clocks and vector units vary), so the float32 matmul peak is measured.
A measurement on a busy machine reads low (the neighbours' share is missing), which once showed
"MFU 153%": so a measured peak is timed again, briefly, at the first few log lines, the best of all
timings kept, and it is never kept below the FLOP/s the model was just seen to reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# Dense (no sparsity) bfloat16 tensor-core peaks from the vendors' datasheets, in FLOP/s, matched
# against torch.cuda.get_device_name() in order (the first substring found wins).
GPU_BF16_PEAKS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # float16 tensor cores (no bf16 there)
    ("T4", 65e12),  # float16
]


RETIMINGS = 3  # short re-timings of a measured peak, one at each of the first log lines


@dataclass
class Peak:
    """A device's peak FLOP/s and where the figure comes from."""

    flops: float
    source: str
    measured: bool = False  # timed on this machine (CPU), so a busy moment can make it read low
    retimings: int = 0  # re-timings still to take (refine)

    def refine(self, achieved_flops: float) -> None:
        """Correct a measured peak as training goes: one more short timing while any are left
        (keeping the best), and never below achieved_flops, what the model just reached. A
        datasheet peak is left as it is."""
        if not self.measured:
            return
        if self.retimings > 0:
            self.retimings -= 1
            self.flops = max(self.flops, measure_cpu_matmul_peak(seconds=0.1))
        self.flops = max(self.flops, achieved_flops)

    def describe(self) -> str:
        """'12.3 GFLOP/s (float32 matmul, measured)'."""
        return f"{self.flops / 1e9:,.1f} GFLOP/s ({self.source})"


def measure_cpu_matmul_peak(size: int = 512, seconds: float = 0.5) -> float:
    """FLOP/s of a float32 square matmul on this CPU with torch's current thread count.

    512 x 512 is large enough to reach the BLAS kernel's steady state on a few cores and small
    enough to stay in cache, so it measures the arithmetic units, not memory. The best of several
    short timings is kept: on a shared machine the slow ones measure the neighbours.
    """
    gen = torch.Generator().manual_seed(0)  # its own generator: the training RNG streams stay untouched
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    for _ in range(3):  # warm-up: thread pool start, caches
        torch.mm(a, b, out=out)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def gpu_datasheet_peak(name: str) -> float | None:
    """The bf16 dense peak of a GPU named like torch.cuda.get_device_name(), if it is a known one."""
    for key, flops in GPU_BF16_PEAKS:
        if key in name:
            return flops
    return None


def device_peak(device: torch.device) -> Peak | None:
    """The peak to measure MFU against, or None when none is known (an unknown GPU, MPS)."""
    if device.type == "cpu":
        return Peak(
            measure_cpu_matmul_peak(),
            f"float32 matmul, measured on {torch.get_num_threads()} threads",
            measured=True,
            retimings=RETIMINGS,
        )
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        flops = gpu_datasheet_peak(name)
        return Peak(flops, f"{name} datasheet bf16 dense") if flops else None
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOP utilisation: the share of the peak that the model's useful arithmetic reaches (at
    most 1: more would mean the peak figure is wrong, not that the model outran the machine)."""
    return min(1.0, tokens_per_sec * flops_per_token / peak_flops)
