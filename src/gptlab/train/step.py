"""One optimizer step: grad_accum micro-steps of forward and backward, then clip and update.

Shared by the trainer and `gptlab bench train`, so the benchmark times exactly what training runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gptlab.config import PrecisionName, TrainConfig
from gptlab.data.batch import Batch
from gptlab.device import fused_adamw
from gptlab.model import Model
from gptlab.precision import (
    DEVICE_DEFAULT,
    PrecisionChoice,
    autocast,
    bf16_if_faster,
    choose_precision,
    precision_for,
)
from gptlab.train import muon
from gptlab.train.distributed import Ranks, all_sum, wrap
from gptlab.train.optim import RoleOptimizer, build_optimizer

# compile=auto on CPU: off. Measured with benchmarks/train_throughput.py on the 2-core development
# machine (docs/benchmarks/train_throughput.md): compiled steps ran 1.04-1.5x as fast on cpu-small and 0.72-0.93x
# on tutorial, after 4-8 s of compilation (minutes when the machine was busy) and only with a C++
# toolchain at hand: no gain to default to. Long CPU runs can still ask for compile=on.
COMPILE_ON_CPU = False


def compile_by_default(setting: str, device: torch.device) -> bool:
    """Whether to torch.compile: "on"/"off" as asked; "auto" is on for CUDA, COMPILE_ON_CPU on CPU,
    off on MPS (whose compiler backend is still experimental)."""
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or (device.type == "cpu" and COMPILE_ON_CPU)


# What a micro-step minimises: the model as the forward pass calls it, a batch -> a scalar loss.
Objective = Callable[[nn.Module, Batch], torch.Tensor]


def language_model_objective(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The next-token loss over the batch's counted targets (pretraining, fine-tuning)."""
    return model(batch.inputs, batch.loss_targets(), **batch.model_inputs())[1]


class StepRunner:
    """Runs optimizer steps on a (possibly compiled, DDP-wrapped or FSDP-sharded) model.

    raw: the GPT itself (sharded in place under FSDP), whose parameters the optimizer holds and
    whose state checkpoints save; wrapped: what the forward pass calls (raw, maybe compiled, maybe
    inside DDP).
    """

    def __init__(
        self,
        raw: nn.Module,
        wrapped: nn.Module,
        optimizer: RoleOptimizer,
        device: torch.device,
        grad_accum: int,
        grad_clip: float,
        objective: Objective | None = None,
        precision: PrecisionChoice = DEVICE_DEFAULT,
        muon_precision: PrecisionChoice | None = None,
    ):
        self.raw, self.wrapped, self.optimizer = raw, wrapped, optimizer
        self.objective = objective or language_model_objective
        self.device, self.grad_accum, self.grad_clip = device, grad_accum, grad_clip
        self.precision = precision
        self.muon_precision = muon_precision  # None: no Muon in this run
        # float16 needs loss scaling so small gradients do not underflow; other precisions do not.
        self.scaler = torch.amp.GradScaler(device.type) if precision_for(device, precision.name).grad_scaler else None

    def _sync_gradients(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are averaged across ranks only on the last micro-step: the earlier ones just
        accumulate locally, so accumulation costs no extra communication."""
        if isinstance(self.wrapped, DistributedDataParallel):
            return contextlib.nullcontext() if last else self.wrapped.no_sync()
        set_sync = getattr(self.raw, "set_requires_gradient_sync", None)  # FSDP (fully_shard adds it)
        if set_sync is not None:
            set_sync(last)
        return contextlib.nullcontext()

    def step(self, next_batch: Callable[[], Batch], lr_factor: float) -> torch.Tensor:
        """One optimizer step with every role at lr_factor x its peak learning rate; returns this
        rank's mean micro-step loss (a tensor, so the caller decides when to wait for the device)."""
        self.optimizer.set_lr_factor(lr_factor)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            # Pinned host memory + non_blocking: the copy overlaps the GPU's queued work.
            batch = next_batch().to(self.device, non_blocking=True)
            with self._sync_gradients(micro == self.grad_accum - 1):
                with autocast(self.device, self.precision.name):
                    loss = self.objective(self.wrapped, batch)
                scaled = loss / self.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
        optimizers = self.optimizer.optimizers
        if self.scaler:
            for o in optimizers:
                self.scaler.unscale_(o)  # clip the true gradients, not the scaled ones
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.grad_clip)
        if self.scaler:
            for o in optimizers:
                self.scaler.step(o)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / self.grad_accum


def resolve_precision(raw: Model, tcfg: TrainConfig, ranks: Ranks, device: torch.device) -> PrecisionChoice:
    """Resolve tcfg.precision for this model (precision.choose_precision) and record the result in
    tcfg, so the run's config says what ran and a resumed run keeps it. Every rank takes rank 0's
    choice: ranks computing in different precisions would not stay in step."""
    choice = choose_precision(tcfg.precision, device, raw, tcfg.batch_size, raw.config.block_size)
    choice = _rank_zeros(choice, tcfg.precision == "auto", ranks, device)
    tcfg.precision = choice.name
    return choice


def resolve_muon_precision(
    optimizer: RoleOptimizer, tcfg: TrainConfig, asked: PrecisionName, ranks: Ranks, device: torch.device
) -> PrecisionChoice | None:
    """Resolve tcfg.muon_precision, the dtype of Muon's orthogonalisation, set it in the Muon groups
    and record it in tcfg (None: the run has no Muon of ours). As asked; auto follows an asked
    precision (asked: the run's precision setting before resolve_precision), and where that is auto on
    the CPU, times Newton–Schulz on this optimizer's own stacks in fp32 and bf16 (muon.time_newton_schulz)
    and keeps the faster: batched bf16 products can pay there even when the model's step does not.
    Off the CPU auto is make_muon's choice for the device. Rank 0's choice is every rank's."""
    ours = [o for o in optimizer.optimizers if isinstance(o, muon.Muon)]
    if not ours:
        return None
    setting = tcfg.muon_precision
    if setting == "auto" and asked in ("fp32", "bf16"):
        choice = PrecisionChoice(asked, f"as precision={asked}")
    elif setting != "auto":
        choice = PrecisionChoice(setting, "as asked")
    elif device.type != "cpu":
        choice = DEVICE_DEFAULT
    else:
        fp32, bf16 = muon.time_newton_schulz([s for o in ours for s in o.stacks()])
        choice = _rank_zeros(bf16_if_faster(fp32, bf16, "its own stacks"), True, ranks, device)
    tcfg.muon_precision = choice.name
    if choice.name != "auto":
        for o in ours:
            o.set_ns_dtype(torch.bfloat16 if choice.name == "bf16" else torch.float32)
    return choice


def _rank_zeros(choice: PrecisionChoice, measured: bool, ranks: Ranks, device: torch.device) -> PrecisionChoice:
    """choice, or rank 0's where ranks measured each their own (a vote every rank joins)."""
    if not (ranks.distributed and measured and choice.name in ("fp32", "bf16")):
        return choice
    bf16 = all_sum([float(ranks.is_main and choice.name == "bf16")], ranks, device)[0] > 0
    return PrecisionChoice("bf16" if bf16 else "fp32", choice.how + " (rank 0's measurement)")


def make_runner(
    raw: Model, tcfg: TrainConfig, ranks: Ranks, device: torch.device, objective: Objective | None = None
) -> StepRunner:
    """Distribute (DDP or FSDP), maybe compile, and build the optimizer around a model on device
    (objective: what each micro-step minimises; the language-model loss unless given). Resolves
    tcfg.precision first (resolve_precision), and Muon's (resolve_muon_precision) once it is built.

    FSDP shards the model in place before compiling; DDP wraps the compiled model, so its
    gradient hooks stay outside the compiled graph and no_sync keeps its plain meaning.
    """
    asked = tcfg.precision
    precision = resolve_precision(raw, tcfg, ranks, device)
    if tcfg.fsdp:
        wrap(raw, ranks, device, fsdp=True)
    # torch.compile of a module gives a module (OptimizedModule); its annotation says only "a callable".
    base = cast(nn.Module, torch.compile(raw)) if compile_by_default(tcfg.compile, device) else raw
    wrapped = base if tcfg.fsdp else wrap(base, ranks, device, fsdp=False)
    optimizer = build_optimizer(raw, tcfg, device, fused=fused_adamw(device))
    muon_precision = resolve_muon_precision(optimizer, tcfg, asked, ranks, device)
    return StepRunner(
        raw, wrapped, optimizer, device, tcfg.grad_accum, tcfg.grad_clip, objective, precision, muon_precision
    )
