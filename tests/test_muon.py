"""Muon (train/muon.py): the same update as torch.optim.Muon, orthogonal updates, split blocks,
batching that changes nothing, a state_dict that resumes the same trajectory, and make_muon's choice;
Polar Express coefficients, NorMuon's row normalisation and cautious weight decay."""

from __future__ import annotations

import io

import pytest
import torch

from gptlab.train.muon import (
    NS_COEFFICIENTS,
    POLAR_COEFFICIENTS,
    Muon,
    adjusted_lr,
    make_muon,
    newton_schulz,
    normalize_rows,
)

SHAPES = [(32, 32), (32, 32), (48, 16), (16, 48)]  # two alike (one batch), a tall and a wide matrix


def _run(make, inits, grads):
    """Params after stepping an optimizer made by make(params) through grads (one list per step)."""
    params = [x.clone().requires_grad_(True) for x in inits]
    opt = make(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def _problem(shapes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inits = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    return inits, grads


def _rel_diff(after_a, after_b, before):
    """Largest difference between two runs, relative to how far the params moved."""
    return max(((a - b).norm() / (a - x).norm()).item() for a, b, x in zip(after_a, after_b, before))


def test_same_update_as_torch_muon():
    inits, grads = _problem(SHAPES, steps=3)
    hyper = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, ns_steps=5)
    ref = _run(lambda ps: torch.optim.Muon(ps, **hyper), inits, grads)
    ours_bf16 = _run(lambda ps: Muon(ps, ns_dtype=torch.bfloat16, **hyper), inits, grads)
    ours_fp32 = _run(lambda ps: Muon(ps, ns_dtype=torch.float32, **hyper), inits, grads)
    # Same dtype, same operations: equal up to bf16 rounding (well under one bf16 ulp, 4e-3).
    assert _rel_diff(ours_bf16, ref, inits) < 2e-3
    # float32 iteration: the same update, without bf16's rounding (measured ~1e-2 apart).
    assert _rel_diff(ours_fp32, ref, inits) < 3e-2


def test_update_is_near_orthogonal():
    n = 32
    gen = torch.Generator().manual_seed(1)
    u, _, v = torch.linalg.svd(torch.randn(n, n, generator=gen))
    raw = torch.logspace(-1, 1, n)  # a gradient whose singular values span 100x
    p = torch.randn(n, n, generator=gen).requires_grad_(True)
    before = p.detach().clone()
    p.grad = u @ torch.diag(raw) @ v
    Muon([p], lr=1.0, momentum=0.0, weight_decay=0.0).step()
    update = (before - p.detach()) / adjusted_lr(1.0, (n, n))
    s = torch.linalg.svdvals(update)
    # Muon's quintic does not converge to 1: it leaves singular values oscillating in ~[0.68, 1.2].
    assert s.min() > 0.65 and s.max() < 1.25
    assert s.max() / s.min() < 2 < (raw.max() / raw.min()) / 20


def test_split_orthogonalises_each_block_like_separate_params():
    d = 16
    inits, grads = _problem([(3 * d, d)], steps=2, seed=2)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
    fused = _run(lambda ps: Muon([{"params": ps, "split": 3}], **hyper), inits, grads)[0]
    blocks = _run(lambda ps: Muon(ps, **hyper), list(inits[0].chunk(3)), [list(g[0].chunk(3)) for g in grads])
    torch.testing.assert_close(fused, torch.cat(blocks), rtol=1e-5, atol=1e-6)
    # One step from rest with no decay: each block's update is orthogonal on its own.
    p = inits[0].clone().requires_grad_(True)
    p.grad = grads[0][0].clone()
    Muon([{"params": [p], "split": 3}], lr=1.0, momentum=0.0, weight_decay=0.0).step()
    for block in (inits[0] - p.detach()).chunk(3):
        s = torch.linalg.svdvals(block)
        assert s.min() > 0.65 and s.max() < 1.25
    # Unsplit, the (3D, D) matrix is orthogonalised whole: its blocks are not orthogonal.
    q = inits[0].clone().requires_grad_(True)
    q.grad = grads[0][0].clone()
    Muon([q], lr=1.0, momentum=0.0, weight_decay=0.0).step()
    whole = (inits[0] - q.detach()) / adjusted_lr(1.0, (3 * d, d))
    assert torch.linalg.svdvals(whole[:d]).min() < 0.5


def test_batched_equals_per_matrix():
    shapes = [(24, 24)] * 3 + [(40, 24)] * 2
    inits, grads = _problem(shapes, steps=3, seed=3)
    hyper = dict(lr=0.02, weight_decay=0.1)
    together = _run(lambda ps: Muon(ps, **hyper), inits, grads)
    for i, after in enumerate(together):
        alone = _run(lambda ps: Muon(ps, **hyper), [inits[i]], [[g[i]] for g in grads])[0]
        torch.testing.assert_close(after, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"normalize": True, "ns_coefficients": POLAR_COEFFICIENTS}])
def test_state_dict_round_trip(options):
    inits, grads = _problem([(12, 8), (24, 8)], steps=3, seed=4)

    def make(ps):
        return Muon([{"params": ps[:1]}, {"params": ps[1:], "split": 3, "lr": 0.03}], lr=0.02, **options)

    straight = _run(make, inits, grads)
    mid = _run(make, inits, grads[:2])
    params = [x.clone().requires_grad_(True) for x in inits]
    first = make(params)
    for step_grads in grads[:2]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = [p.detach().clone().requires_grad_(True) for p in params]
    resumed = make(resumed_params)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for p, g in zip(resumed_params, grads[2]):
        p.grad = g.clone()
    resumed.step()
    for a, b, m in zip(resumed_params, straight, mid):
        assert not torch.equal(b, m)  # the last step moved the params, and with momentum
        assert torch.equal(a.detach(), b)


def test_make_muon_picks_by_device():
    def groups():
        return [
            {"params": [torch.zeros(6, 4, requires_grad=True)], "split": 3},
            {"params": [torch.zeros(4, 4, requires_grad=True)]},
        ]

    cpu = make_muon(groups(), torch.device("cpu"), lr=0.02, momentum=0.9)
    assert type(cpu) is Muon and all(g["ns_dtype"] == "float32" for g in cpu.param_groups)
    assert cpu.param_groups[0]["lr"] == 0.02 and cpu.param_groups[0]["momentum"] == 0.9
    # Choosing for CUDA only builds the optimizer, so it can be checked without a GPU.
    cuda_split = make_muon(groups(), torch.device("cuda"), lr=0.02)
    assert type(cuda_split) is Muon and cuda_split.param_groups[0]["ns_dtype"] == "bfloat16"
    cuda_plain = make_muon(groups()[1:], torch.device("cuda"), lr=0.02, ns_steps=4)
    assert type(cuda_plain) is torch.optim.Muon and cuda_plain.param_groups[0]["ns_steps"] == 4


def _ill_conditioned(n=64, seed=1):
    """One n x n matrix whose singular values span 100x."""
    gen = torch.Generator().manual_seed(seed)
    u, _, v = torch.linalg.svd(torch.randn(n, n, generator=gen))
    return (u @ torch.diag(torch.logspace(-2, 0, n)) @ v)[None]


def test_polar_express_lands_closer_to_orthogonal_in_the_same_steps():
    x = _ill_conditioned()
    ns5 = torch.linalg.svdvals(newton_schulz(x, 5, NS_COEFFICIENTS)[0])
    polar = torch.linalg.svdvals(newton_schulz(x, 5, POLAR_COEFFICIENTS)[0])
    # Measured: ns5 leaves [0.68, 1.20], polar [0.86, 1.14]: same cost, half the distance from 1.
    assert (polar - 1).abs().max() < 0.6 * (ns5 - 1).abs().max()
    assert (polar - 1).abs().max() < 0.2


def test_normalize_rows_evens_the_rows_and_keeps_the_norm():
    gen = torch.Generator().manual_seed(2)
    update = torch.randn(3, 8, 16, generator=gen) * torch.linspace(0.1, 3.0, 8)[:, None]  # uneven rows
    moment = torch.zeros(3, 8, 1)
    out = normalize_rows(update, moment, beta2=0.95)
    rms = out.square().mean(-1)
    torch.testing.assert_close(rms, rms[:, :1].expand_as(rms))  # every row of a block alike
    torch.testing.assert_close(out.norm(dim=(-2, -1)), update.norm(dim=(-2, -1)))
    torch.testing.assert_close(moment, 0.05 * update.square().mean(-1, keepdim=True))  # the running average moved


def test_cautious_weight_decay_spares_weights_the_update_grows():
    gen = torch.Generator().manual_seed(5)
    init, grad = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    lr, decay = 0.1, 0.5
    after = {}
    for cautious in (False, True):
        p = init.clone().requires_grad_(True)
        p.grad = grad.clone()
        Muon([p], lr=lr, momentum=0.0, nesterov=False, weight_decay=decay, cautious_wd=cautious).step()
        after[cautious] = p.detach()
    o = newton_schulz(grad[None])[0]
    step = adjusted_lr(lr, (16, 16)) * o
    shrinks = o * init > 0  # the step -o moves these weights toward zero
    assert 0 < shrinks.sum() < shrinks.numel()
    torch.testing.assert_close(after[True][~shrinks], (init - step)[~shrinks])  # no decay where the update grows them
    torch.testing.assert_close(after[True][shrinks], (init * (1 - lr * decay) - step)[shrinks])
    torch.testing.assert_close(after[False], init * (1 - lr * decay) - step)


def test_make_muon_needs_its_own_muon_for_its_own_options():
    params = [torch.zeros(4, 4, requires_grad=True)]
    for option in ({"ns_coefficients": POLAR_COEFFICIENTS}, {"normalize": True}, {"cautious_wd": True}):
        assert type(make_muon(params, torch.device("cuda"), lr=0.02, **option)) is Muon
    bf16 = make_muon(params, torch.device("cpu"), ns_dtype=torch.bfloat16, lr=0.02)
    assert bf16.param_groups[0]["ns_dtype"] == "bfloat16"
