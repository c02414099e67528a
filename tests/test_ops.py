"""model/ops.py: each hand-written forward and backward against the plain formula, in float64, so a wrong
gradient fails here rather than as a slower-learning model."""

import pytest
import torch

from gptlab.model.ops import relu_squared, rms_norm, rotate


def _grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The gradients of a random linear function of out with respect to inputs."""
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


def _leaf(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _reference_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("heads", [None, 6])
def test_rms_norm_matches_the_formula_and_its_gradient(heads):
    """A stream's norm (weight (C,)), and several heads' norms in one call (weight (heads, D)) on a strided
    view, as attention norms q and k: output, input gradient and weight gradient."""
    torch.manual_seed(0)
    if heads is None:
        x, w = _leaf(3, 5, 16), _leaf(16)
        view = x
    else:
        x, w = _leaf(3, 5, heads * 8 + 7), _leaf(heads, 8)
        view = x[..., : heads * 8].view(3, 5, heads, 8)  # a slice of a wider row, as qk is of qkv
    out = rms_norm(view, w, 1e-6)
    ref = _reference_rms_norm(view, w, 1e-6)
    torch.testing.assert_close(out, ref)
    for got, want in zip(_grads(out, (x, w)), _grads(ref, (x, w))):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (_leaf(2, 3, 4), _leaf(4)))


def test_rotate_matches_the_pairwise_rotation_and_its_gradient():
    """x·cos + swap(x)·signed sin is (x₁cos − x₂sin, x₂cos + x₁sin) over the halves; its gradient too."""
    torch.manual_seed(1)
    x = _leaf(2, 7, 3, 8)
    angles = torch.rand(7, 1, 4, dtype=torch.float64) * 6
    cos, sin = angles.cos(), angles.sin()
    full_cos = torch.cat((cos, cos), -1).expand(7, 3, 8)
    signed_sin = torch.cat((-sin, sin), -1).expand(7, 3, 8)
    out = rotate(x, full_cos, signed_sin)
    x1, x2 = x.chunk(2, dim=-1)
    ref = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(_grads(out, (x,))[0], _grads(ref, (x,))[0])
    # A gradient arriving transposed (as attention's does, through q and k's (B, H, T, D) view).
    out = rotate(x, full_cos, signed_sin).transpose(1, 2)
    ref = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).transpose(1, 2)
    torch.testing.assert_close(_grads(out, (x,))[0], _grads(ref, (x,))[0])


def test_relu_squared_matches_the_formula_and_its_gradient():
    torch.manual_seed(2)
    h = _leaf(4, 9, 12)
    out, ref = relu_squared(h), torch.relu(h) ** 2
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(_grads(out, (h,))[0], _grads(ref, (h,))[0])
    assert torch.autograd.gradcheck(relu_squared, (_leaf(3, 5),))


def test_ops_return_their_input_dtype_and_norm_in_float32():
    """bfloat16 in, bfloat16 out (gradients too), with the norm's statistics taken in float32: a row whose
    squares overflow bfloat16's sum-then-divide would come out wrong otherwise."""
    x = (torch.randn(4, 16) * 3).bfloat16().requires_grad_()
    w = torch.ones(16, requires_grad=True)
    out = rms_norm(x, w, 1e-6)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(), _reference_rms_norm(x.double(), w.double(), 1e-6).float(), atol=2e-2, rtol=1e-2
    )
    out.float().sum().backward()
    assert (
        x.grad is not None and x.grad.dtype == torch.bfloat16 and w.grad is not None and w.grad.dtype == torch.float32
    )
    cos, sin = torch.ones(16), torch.zeros(16)
    assert rotate(x, cos, sin).dtype == torch.bfloat16 and torch.equal(rotate(x, cos, sin), x)
