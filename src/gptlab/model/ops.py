"""The modern layers' elementwise parts as autograd Functions with hand-written backward passes:
RMSNorm, the rotary embedding's rotation and ReLU².

On the CPU torch has no fused kernel for them. F.rms_norm is a composite there (x², mean, rsqrt and
two products) whose backward autograd assembles op by op, over a dozen passes over the tensor, where
LayerNorm's is one kernel; ReLU² pays a power's backward; the rotation paid a chunk and a cat each way.
At the CPU demo's width every pass is a trip through memory, so each Function here makes only the
passes its formula needs and keeps what its backward reads. Measured in the demo model's forward and
backward (4x4x128, T=64, B=12, fp32, one thread, under load, 2026-12-06), against the same model with
one part put back as it was: the norms save ~2 ms, ReLU² ~4 ms, q's and k's QK-norm and RoPE ~3 ms,
of ~64 ms.

Each computes in float32 at least whatever its input's dtype (as F.rms_norm computes its statistics; a
no-op in float32) and returns the input's dtype. tests/test_ops.py checks forward and gradient against the
plain formulas in float64.
"""

from __future__ import annotations

from typing import Any

import torch


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or as it is when wider (float64): the precision these compute in."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """The two halves of the last dim exchanged: RoPE's pair partner of every channel (i <-> i + D/2)."""
    return x.roll(x.size(-1) // 2, dims=-1)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = _wide(x)
        # One pass for the sum of squares (a norm), the rest on one number per row.
        rstd = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().mul_(1.0 / x.size(-1))
        rstd = rstd.add_(eps).rsqrt_()
        normed = xf * rstd
        ctx.save_for_backward(normed, rstd, weight)
        ctx.in_dtype = x.dtype
        return (normed * weight).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        normed, rstd, weight = ctx.saved_tensors
        g = _wide(grad)
        scaled = g * normed  # the weight's gradient, before summing over rows
        grad_weight = scaled.reshape(-1, *weight.shape).sum(0)
        # d/dx of x̂·γ with x̂ = x·rstd: rstd · (g·γ − x̂ · mean(g·γ·x̂)), in place where a buffer is free
        # (fewer fresh tensors: at the demo's width each costs a trip through memory).
        dot = scaled.mul_(weight).sum(-1, keepdim=True).mul_(1.0 / normed.size(-1))
        grad_x = (g * weight).addcmul_(normed, dot, value=-1).mul_(rstd)
        return grad_x.to(ctx.in_dtype), grad_weight.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / √(mean(x²) + eps) · weight over the last dim. weight broadcasts against x's trailing dims,
    each of its entries one channel's scale: (C,) for a stream's norm, (heads, D) for several heads'
    norms in one call (q's and k's QK-norm)."""
    return _RMSNorm.apply(x, weight.contiguous(), eps)


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = _wide(x)
        ctx.save_for_backward(cos, sin)
        ctx.in_dtype = x.dtype
        return (xf * cos).addcmul_(swap_halves(xf), sin).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        g = _wide(grad)
        # The rotation's transpose: the same with the angle negated. Since sin is signed (−, +) by half,
        # swapping it negates it, so grad·cos + swap(grad·sin) = grad·cos − swap(grad)·sin.
        # Written contiguous whatever the incoming gradient's layout (attention's arrives transposed), so
        # the ops after it (QK-norm's backward) run over contiguous rows.
        out = torch.mul(
            g, cos, out=torch.empty(g.shape, dtype=torch.promote_types(g.dtype, cos.dtype), device=g.device)
        )
        return out.addcmul_(swap_halves(g), sin, value=-1).to(ctx.in_dtype), None, None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE: each pair of channels (i, i + D/2) of the last dim rotated by its angle, as x·cos +
    swap_halves(x)·sin, where cos and sin (broadcasting against x) hold each pair's cosine on both
    channels and its sine negated on the first half: (x₁cos − x₂sin, x₂cos + x₁sin)."""
    return _Rotate.apply(x, cos, sin)


class _ReLUSquared(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        r = torch.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        # 2·relu(h)·grad in one pass (added to a zero scalar: addcmul is the one op with a factor), and
        # zero wherever h <= 0 without a mask.
        return torch.addcmul(r.new_zeros(()), r, grad, value=2)


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    """ReLU(h)²."""
    return _ReLUSquared.apply(h)
