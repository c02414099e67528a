"""`gptlab bench train`: how fast a preset trains here, on random tokens (no dataset needed).

A few warm-up steps (compilation, allocator and cache warm-up happen there) are not timed; then
timed steps run exactly the trainer's step (train/step.py), each waiting for its loss as the
trainer does. Reported: tokens/s, step time, model FLOP/s, MFU and peak memory.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.config import RunConfig, build_config
from gptlab.data.batch import Batch
from gptlab.device import configure_backends, pick_device, synchronize
from gptlab.errors import GptlabError
from gptlab.model import build_model
from gptlab.model.accounting import count_params, flops_per_token
from gptlab.model.presets import CHAR_VOCAB
from gptlab.precision import precision_for
from gptlab.train.distributed import Ranks
from gptlab.train.perf import device_peak, mfu
from gptlab.train.step import StepRunner, compile_by_default, make_runner


@dataclass
class BenchSetup:
    """A model ready to step on random tokens."""

    cfg: RunConfig
    device: torch.device
    runner: StepRunner
    compiled: bool

    def next_batch(self) -> Batch:
        """B random windows of T+1 ids: inputs and targets."""
        B, T = self.cfg.train.batch_size, self.cfg.model.block_size
        data = torch.randint(0, self.cfg.model.vocab_size, (B, T + 1))
        if self.device.type == "cuda":
            data = data.pin_memory()
        return Batch(data[:, :-1], data[:, 1:])

    def step(self) -> None:
        """One optimizer step, waiting for its loss as the trainer does."""
        self.runner.step(self.next_batch, 1.0).item()


def setup_bench(
    preset: str, device: str = "auto", compile: str = "auto", overrides: list[str] | None = None
) -> BenchSetup:
    """Build a preset's model and optimizer on a device, as the trainer would."""
    cfg = build_config(preset, None, list(overrides or []) + [f"device={device}", f"compile={compile}"])
    if cfg.model.arch != "gpt":  # random windows have no source to read
        raise GptlabError(
            f"bench train times decoder-only models; arch={cfg.model.arch} is measured by benchmarks/encdec_couplets.py"
        )
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = CHAR_VOCAB
    dev = pick_device(cfg.train.device)
    configure_backends(dev)
    torch.manual_seed(cfg.train.seed)
    runner = make_runner(build_model(cfg.model).to(dev), cfg.train, Ranks(), dev)
    return BenchSetup(cfg, dev, runner, compile_by_default(cfg.train.compile, dev))


def bench_train(
    preset: str,
    device: str = "auto",
    steps: int = 20,
    warmup: int = 5,
    compile: str = "auto",
    overrides: list[str] | None = None,
    log=print,
) -> dict[str, Any]:
    """Time `steps` optimizer steps of a preset after `warmup` untimed ones; return the figures."""
    if steps < 1 or warmup < 0:
        raise GptlabError(f"--steps must be >= 1 and --warmup >= 0 (got {steps} and {warmup})")
    bench = setup_bench(preset, device, compile, overrides)
    cfg, dev, tcfg = bench.cfg, bench.device, bench.cfg.train
    B, T = tcfg.batch_size, cfg.model.block_size
    peak = device_peak(dev)
    log(
        f"bench {preset}: {count_params(cfg.model).total:,} parameters, B={B} x accum {tcfg.grad_accum} x T={T}, "
        f"{dev} {precision_for(dev, bench.cfg.train.precision).name}{', compiled' if bench.compiled else ''}; peak "
        f"{peak.describe() if peak else 'unknown for this device'}"
    )
    for i in range(warmup):
        bench.step()
        log(f"warm-up step {i + 1}/{warmup}")
    synchronize(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        bench.step()
    synchronize(dev)
    seconds = time.perf_counter() - t0
    tokens_per_sec = steps * B * tcfg.grad_accum * T / seconds
    fpt = flops_per_token(cfg.model)["train"]
    if dev.type == "cuda":
        peak_memory, memory_kind = torch.cuda.max_memory_allocated(dev), "GPU memory allocated"
    else:
        # Linux reports the peak resident set size in KiB (macOS in bytes).
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_memory, memory_kind = rss * (1 if sys.platform == "darwin" else 1024), "process peak RSS"
    return {
        "preset": preset,
        "device": str(dev),
        "precision": precision_for(dev, bench.cfg.train.precision).name,
        "compile": bench.compiled,
        "batch_size": B,
        "grad_accum": tcfg.grad_accum,
        "block_size": T,
        "steps": steps,
        "tokens_per_sec": tokens_per_sec,
        "step_time_s": seconds / steps,
        "model_flops_per_sec": tokens_per_sec * fpt,
        "peak_flops": peak.flops if peak else None,
        "mfu": mfu(tokens_per_sec, fpt, peak.flops) if peak else None,
        "peak_memory_bytes": peak_memory,
        "memory_kind": memory_kind,
    }


def report_lines(r: dict[str, Any]) -> list[str]:
    """Human-readable lines for bench_train's figures."""
    lines = [
        f"tokens/s:    {r['tokens_per_sec']:,.0f}",
        f"step time:   {r['step_time_s'] * 1000:,.1f} ms",
        f"model FLOPs: {r['model_flops_per_sec'] / 1e9:,.2f} GFLOP/s",
    ]
    lines.append(f"MFU:         {r['mfu']:.1%}" if r["mfu"] is not None else "MFU:         n/a (peak unknown)")
    lines.append(f"peak memory: {r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['memory_kind']})")
    return lines
