"""Muon for the hidden matrices: momentum, then an orthogonalised update (Newton–Schulz).

torch.optim.Muon runs its Newton–Schulz iteration in bfloat16, one matrix at a time: fast on a GPU,
about 12x slower per step on CPUs without fast bfloat16 matrix products. This Muon gives the same
update (momentum buffer, Nesterov form, normalisation, quintic coefficients, eps, lr adjustment) but
runs the iteration in a chosen dtype (float32 on CPU), once per shape over a stack of all the
same-shaped matrices, and can orthogonalise a fused q/k/v weight as its three blocks.
make_muon picks the library's optimizer or this one for a device.
"""

from __future__ import annotations

import math

import torch

# Keller Jordan's quintic coefficients and eps: the same numbers torch.optim.Muon uses.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def newton_schulz(
    x: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = EPS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Orthogonalise each matrix of a stack x (N, A, B): roughly U V^T of its SVD, returned in dtype.

    torch.optim.Muon's iteration, batched: scale each matrix by its Frobenius norm (so its spectral
    norm is at most 1), then `steps` quintic steps X <- aX + (bG + cG^2)X with G = X X^T, on the wide
    orientation so G is the smaller Gram matrix. Singular values land in roughly [0.7, 1.2], not at 1.
    """
    a, b, c = coefficients
    x = x.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
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


class Muon(torch.optim.Optimizer):
    """Muon over 2-D params, with the update of torch.optim.Muon (same hyper-parameter names).

    Per group, beyond torch's: ns_dtype (the Newton–Schulz compute dtype; float32 is the fast one on
    CPU, bfloat16 reproduces torch's numerics) and split (rows cut into `split` equal blocks, each
    orthogonalised on its own: a fused q/k/v weight (3D, D) moves as three D x D weights would).
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
            ns_coefficients=NS_COEFFICIENTS,
            eps=EPS,
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
        """One update of every param with a gradient; one Newton–Schulz call per block shape."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches: dict[tuple, list] = {}  # matrices that can share one batched iteration
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - mu)  # torch's form: an average of gradients, not a sum
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                blocks = update.reshape(group["split"], -1, p.size(1))
                key = (
                    blocks.shape[1:],
                    p.device,
                    getattr(torch, group["ns_dtype"]),
                    group["ns_steps"],
                    tuple(group["ns_coefficients"]),
                    group["eps"],
                )
                batches.setdefault(key, []).append((p, group, blocks))
        for (shape, _, dtype, steps, coefficients, eps), items in batches.items():
            stacked = torch.cat([blocks for _, _, blocks in items])
            ortho = newton_schulz(stacked, steps, coefficients, eps, dtype)
            for (p, group, _), o in zip(items, ortho.split([b.size(0) for _, _, b in items])):
                # The lr adjustment uses the block shape, not the param's: each block is the matrix
                # orthogonalised, so (3D, D) split 3 gets a D x D block's lr (x1, not sqrt(3)), the
                # same step three separate D x D weights would take.
                lr = group["lr"]
                p.mul_(1 - lr * group["weight_decay"])  # decoupled decay, unadjusted lr, as torch
                p.add_(o.reshape(p.shape).to(p.dtype), alpha=-adjusted_lr(lr, shape, group["adjust_lr_fn"]))
        return loss


def make_muon(param_groups, device: torch.device, **hyper) -> torch.optim.Optimizer:
    """The one way to make Muon: the library's where it is fast, this module's where it is not.

    param_groups: params or group dicts (a group may set split). hyper: lr, momentum, nesterov,
    weight_decay, ns_steps, adjust_lr_fn, accepted by both. On CUDA with no split group this returns
    torch.optim.Muon (its bfloat16 iteration runs fast there); a split group needs this Muon, with a
    bfloat16 iteration on CUDA. Elsewhere this Muon in float32, since bfloat16 matrix products are
    slow on CPU and one batched float32 product per shape is what makes Muon pay there.
    """
    groups = list(param_groups)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    splits = any(g.get("split", hyper.get("split", 1)) > 1 for g in groups)
    if device.type == "cuda" and not splits:
        hyper.pop("split", None)
        return torch.optim.Muon([{k: v for k, v in g.items() if k != "split"} for g in groups], **hyper)
    ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return Muon(groups, ns_dtype=ns_dtype, **hyper)
