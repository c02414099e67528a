"""Muon for the hidden matrices: momentum, then an orthogonalised update (Newton–Schulz).

torch.optim.Muon runs its Newton–Schulz iteration in bfloat16, one matrix at a time: fast on a GPU,
and on CPUs with fast bfloat16 products (AMX), about 12x slower per step on CPUs without them. This
Muon gives the same update (momentum buffer, Nesterov form, normalisation, quintic coefficients, eps,
lr adjustment) but runs the iteration in a chosen dtype (the run's muon_precision, measured on a CPU:
train/step.py), once per block size over a stack of all the matrices of that size (tall ones as their
transposes), and can orthogonalise a fused q/k/v weight as its three blocks.

Beyond torch's, each off by default (the default update is torch's): Polar Express coefficients (a
schedule of quintics, one per iteration, that reaches orthogonality in fewer steps), NorMuon's
normalisation (each row of the update divided by its running RMS, the update's norm kept) and cautious
weight decay (only weights the update also pushes toward zero are decayed).
make_muon picks the library's optimizer or this one for a device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from gptlab.precision import race

# Keller Jordan's quintic coefficients and eps: the same numbers torch.optim.Muon uses.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel, Persson, Musco, Gower 2025): one quintic per iteration, each optimal for the
# singular values the previous ones leave, computed for inputs scaled to spectral norm <= 1/1.02 (a
# 2% safety margin, so POLAR_MARGIN divides the input too). The published 5-step schedule.
POLAR_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_MARGIN = 1.02
COEFFICIENTS = {"ns5": NS_COEFFICIENTS, "polar": POLAR_COEFFICIENTS}  # by their config name (muon_coeffs)
EPS = 1e-7
NORMALIZE_BETA2 = 0.95  # NorMuon's decay of each row's second moment (its paper's value)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def _schedule(coefficients: Sequence, steps: int) -> tuple[list, float]:
    """(the (a, b, c) of each of `steps` iterations, the input's norm margin) for one triple (the same
    every step, no margin) or a schedule (its first steps, the last repeated beyond it; POLAR_MARGIN)."""
    if isinstance(coefficients[0], (int, float)):
        return [tuple(coefficients)] * steps, 1.0
    return [tuple(coefficients[min(i, len(coefficients) - 1)]) for i in range(steps)], POLAR_MARGIN


def newton_schulz(
    x: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = EPS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Orthogonalise each matrix of a stack x (N, A, B): roughly U V^T of its SVD, returned in dtype.

    torch.optim.Muon's iteration, batched: scale each matrix by its Frobenius norm (so its spectral
    norm is at most 1), then `steps` quintic steps X <- aX + (bG + cG^2)X with G = X X^T, on the wide
    orientation so G is the smaller Gram matrix. coefficients: one (a, b, c) for every step (singular
    values land in roughly [0.7, 1.2], not at 1), or a schedule of them (POLAR_COEFFICIENTS).
    """
    schedule, margin = _schedule(coefficients, steps)
    x = x.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    norm = x.norm(dim=(-2, -1), keepdim=True)
    x = x / (norm * margin if margin != 1.0 else norm).clamp(min=eps)
    for a, b, c in schedule:
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, shape, adjust_lr_fn: str | None = None) -> float:
    """lr for an orthogonalised (A, B) matrix, as torch.optim.Muon scales it so updates of any shape
    have a like RMS: "original" (default) sqrt(max(1, A/B)); "match_rms_adamw" 0.2 sqrt(max(A, B))."""
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def normalize_rows(update: torch.Tensor, second_moment: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon: each row of each block of update (N, A, B) divided by its running RMS, the blocks'
    Frobenius norms kept. second_moment (N, A, 1), the rows' mean squares averaged over steps, is
    updated in place. An orthogonalised update has rows of uneven size (a neuron's share); this evens
    them out, as Adam does per weight, at the cost of one number per row."""
    mean_square = update.square().mean(dim=-1, keepdim=True)
    second_moment.lerp_(mean_square.to(second_moment.dtype), 1 - beta2)
    scaled = update * second_moment.clamp(min=1e-10).rsqrt().to(update.dtype)
    kept = update.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-10)
    return scaled * kept


class Muon(torch.optim.Optimizer):
    """Muon over 2-D params, with the update of torch.optim.Muon (same hyper-parameter names).

    Per group, beyond torch's: ns_dtype (the Newton–Schulz compute dtype; bfloat16 reproduces torch's
    numerics), split (rows cut into `split` equal blocks, each orthogonalised on its own: a fused q/k/v
    weight (3D, D) moves as three D x D weights would), ns_coefficients (one triple, or a schedule such
    as POLAR_COEFFICIENTS), normalize (NorMuon, normalize_rows) and cautious_wd (decay only where the
    update has the weight's sign).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.float32,
        adjust_lr_fn: str | None = None,
        split: int = 1,
        ns_coefficients: Sequence = NS_COEFFICIENTS,
        normalize: bool = False,
        cautious_wd: bool = False,
    ):
        if lr < 0 or weight_decay < 0 or momentum < 0:
            raise ValueError(f"lr={lr}, weight_decay={weight_decay}, momentum={momentum} must be >= 0")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} is not one of {ADJUST_LR_FNS}")
        # The dtype is kept by name: checkpoints (torch.distributed.checkpoint) take plain values only.
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_dtype=str(ns_dtype).removeprefix("torch."),
            adjust_lr_fn=adjust_lr_fn,
            split=split,
            ns_coefficients=ns_coefficients,
            eps=EPS,
            normalize=normalize,
            normalize_beta2=NORMALIZE_BETA2,
            cautious_wd=cautious_wd,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group, checking each param is 2-D with rows that split into `split` equal blocks."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["ns_dtype"] = str(group["ns_dtype"]).removeprefix("torch.")  # a name, whoever set it
        split = group["split"]
        for p in group["params"]:
            if p.ndim != 2 or split < 1 or p.size(0) % split:
                raise ValueError(
                    f"Muon needs 2-D params whose rows split into {split} equal blocks, got shape {tuple(p.shape)}"
                )

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param with a gradient; one Newton–Schulz call per block shape.

        Momentum and Nesterov run as one _foreach op per group; each param's blocks join a stack in
        their wide orientation (a tall block is orthogonalised as its transpose, as the iteration
        would anyway), so tall and wide blocks of the same two sizes share one iteration; the updates
        land with one _foreach op per learning rate."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches: dict[tuple, list[_Item]] = {}  # blocks that can share one batched iteration
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mu, split = group["momentum"], group["split"]
            grads = [p.grad for p in params]
            bufs = [self._momentum_buffer(p) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mu)  # torch's form: an average of gradients, not a sum
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            # What decides the iteration, once per group (the block shape and device join it per param).
            how = (
                getattr(torch, group["ns_dtype"]),
                group["ns_steps"],
                _frozen(group["ns_coefficients"]),
                group["eps"],
            )
            for p, update in zip(params, updates):
                blocks = update.reshape(split, -1, p.size(1))
                tall = blocks.size(1) > blocks.size(2)
                wide = blocks.mT if tall else blocks
                batches.setdefault((wide.shape[1:], p.device, *how), []).append(_Item(p, group, wide, tall))
        for (_, _, dtype, steps, coefficients, eps), items in batches.items():
            # One copy into the stack (none for a lone block): the iteration never writes its input.
            stacked = torch.cat([i.blocks for i in items]) if len(items) > 1 else items[0].blocks
            # Back to the params' dtype once for the stack, not once per param.
            ortho = newton_schulz(stacked, steps, coefficients, eps, dtype).to(items[0].p.dtype)
            self._apply(items, ortho.split([i.blocks.size(0) for i in items]))
        return loss

    def set_ns_dtype(self, dtype: torch.dtype) -> None:
        """Every group iterates in dtype from now on (a run's resolved muon_precision)."""
        for group in self.param_groups:
            group["ns_dtype"] = str(dtype).removeprefix("torch.")

    def stacks(self) -> list[Stack]:
        """The iterations one step runs when every param has a gradient: each stack's (N, A, B) shape
        (blocks in wide orientation) with its steps and coefficients, as step batches them."""
        shapes: dict[tuple, int] = {}
        for group in self.param_groups:
            how = (group["ns_steps"], _frozen(group["ns_coefficients"]), group["eps"])
            for p in group["params"]:
                rows, cols = p.size(0) // group["split"], p.size(1)
                key = (min(rows, cols), max(rows, cols), p.device, getattr(torch, group["ns_dtype"]), *how)
                shapes[key] = shapes.get(key, 0) + group["split"]
        return [
            Stack((n, a, b), steps, coefficients, eps) for (a, b, _, _, steps, coefficients, eps), n in shapes.items()
        ]

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        """p's momentum buffer, made (zeros) on its first step."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]

    def _apply(self, items: list[_Item], ortho: Sequence[torch.Tensor]) -> None:
        """Each item's param moves by its orthogonalised blocks (wide orientation): maybe normalised,
        after its decay. Decay and step are one _foreach op per distinct factor."""
        decays: dict[float, list[torch.Tensor]] = {}
        steps: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for item, o in zip(items, ortho):
            p, group = item.p, item.group
            o = o.mT if item.tall else o  # back to the param's blocks (split, A, B)
            shape = o.shape[1:]
            if group.get("normalize"):  # .get: groups of checkpoints written before these options
                state = self.state[p]
                if "second_moment" not in state:
                    state["second_moment"] = torch.zeros(o.shape[:-1] + (1,), dtype=torch.float32, device=p.device)
                o = normalize_rows(o.float(), state["second_moment"], group["normalize_beta2"])
            o = o.reshape(p.shape).to(p.dtype)
            # The lr adjustment uses the block shape, not the param's: each block is the matrix
            # orthogonalised, so (3D, D) split 3 gets a D x D block's lr (x1, not sqrt(3)), the
            # same step three separate D x D weights would take.
            lr, decay = group["lr"], group["weight_decay"]
            if group.get("cautious_wd") and decay:
                # Only where the step (-o) also shrinks the weight: decay then agrees with the loss.
                p.sub_(p * (o * p > 0), alpha=lr * decay)
            elif decay:
                decays.setdefault(1 - lr * decay, []).append(p)  # decoupled decay, unadjusted lr, as torch
            moves = steps.setdefault(-adjusted_lr(lr, shape, group["adjust_lr_fn"]), ([], []))
            moves[0].append(p)
            moves[1].append(o)
        # Every decay before any step, as torch's order is per param (decay, then step) and a param
        # is in one item only.
        for factor, params in decays.items():
            torch._foreach_mul_(params, factor)
        for alpha, (params, os) in steps.items():
            torch._foreach_add_(params, os, alpha=alpha)


class Stack(NamedTuple):
    """One batched Newton–Schulz iteration of a Muon step: N matrices A x B (A <= B), and how."""

    shape: tuple[int, int, int]
    steps: int
    coefficients: tuple
    eps: float


def time_newton_schulz(stacks: Sequence[Stack]) -> tuple[float, float]:
    """Seconds of one round of the iterations `stacks` (Muon.stacks) on the CPU, in float32 and in
    bfloat16 (precision.race): the cost Muon's precision decides, on the run's own shapes."""
    gen = torch.Generator().manual_seed(0)  # its own stream: timing draws nothing from the run's
    inputs = [torch.randn(s.shape, generator=gen) for s in stacks]

    def iterate(dtype: torch.dtype) -> None:
        for x, s in zip(inputs, stacks):
            newton_schulz(x, s.steps, s.coefficients, s.eps, dtype)

    return race(iterate)


class _Item(NamedTuple):
    """One param's place in a batched iteration: its blocks in wide orientation, and whether they
    were transposed to get there."""

    p: torch.Tensor
    group: dict
    blocks: torch.Tensor
    tall: bool


def _frozen(coefficients: Sequence) -> tuple:
    """Coefficients as a hashable key (a checkpoint may hand them back as lists)."""
    return tuple(tuple(c) if isinstance(c, (list, tuple)) else c for c in coefficients)


def make_muon(
    param_groups, device: torch.device, ns_dtype: torch.dtype | None = None, **hyper
) -> torch.optim.Optimizer:
    """The one way to make Muon: the library's where it is fast, this module's where it is not.

    param_groups: params or group dicts (a group may set split). hyper: lr, momentum, nesterov,
    weight_decay, ns_steps, adjust_lr_fn, accepted by both, and this Muon's own (ns_coefficients,
    normalize, cautious_wd). On CUDA with no split group and none of this Muon's own options this
    returns torch.optim.Muon (its bfloat16 iteration runs fast there); otherwise this Muon, iterating
    in ns_dtype: bfloat16 on CUDA, float32 elsewhere unless given (the run's measured precision: one
    batched product per shape is what makes Muon pay on a CPU).
    """
    groups = list(param_groups)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    splits = any(g.get("split", hyper.get("split", 1)) > 1 for g in groups)
    # This Muon's own options, at values other than torch's update, need this Muon.
    plain = (
        _frozen(hyper.get("ns_coefficients", NS_COEFFICIENTS)) == NS_COEFFICIENTS
        and not hyper.get("normalize")
        and not hyper.get("cautious_wd")
    )
    if device.type == "cuda" and not splits and plain:
        for k in ("ns_coefficients", "normalize", "cautious_wd", "split"):
            hyper.pop(k, None)
        return torch.optim.Muon([{k: v for k, v in g.items() if k != "split"} for g in groups], **hyper)
    if ns_dtype is None:
        ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return Muon(groups, ns_dtype=ns_dtype, **hyper)
