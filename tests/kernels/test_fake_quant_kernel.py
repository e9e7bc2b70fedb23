"""Fake-quantisation Triton kernels (CPU interpreter) against the torch reference and torch's own ops."""

from __future__ import annotations

import pytest
import torch

from surgeon.kernels.fake_quant.op import fake_quant, fake_quant_dynamic
from surgeon.kernels.fake_quant.reference import (
    fake_quant_dynamic_reference,
    fake_quant_grads_reference,
    fake_quant_reference,
)
from surgeon.kernels.fake_quant.triton_kernel import (
    fake_quant_backward,
    fake_quant_dynamic_forward,
    fake_quant_forward,
)

CASES = [(1, 8, 8), (19, 96, 32), (33, 200, 40), (7, 128, 128)]  # (rows, width, group size)


def _setup(rows, width, group, bits=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=gen) * 1.7
    qmax = 2 ** (bits - 1) - 1
    # Scales a little below absmax/qmax, so some values clip and the clipped gradient paths run.
    scale = x.reshape(rows, -1, group).abs().amax(-1) / qmax * 0.8
    zero = torch.randint(-1, 2, scale.shape, generator=gen).float()
    return x, scale, zero, -qmax - 1, qmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,width,group", CASES)
def test_static_forward(rows, width, group, dtype):
    x, scale, zero, qmin, qmax = _setup(rows, width, group)
    x = x.to(dtype)
    out = torch.full_like(x, float("nan"))
    fake_quant_forward(x, scale, zero, group, qmin, qmax, block_m=8, out=out)
    expected = fake_quant_reference(x, scale, zero, group, qmin, qmax)
    assert not out.isnan().any()
    # One unit in the last place of the storage dtype: the CPU interpreter truncates when it casts to
    # bf16 (GROUND.md) where the GPU rounds, so low-precision outputs may differ by that much.
    ulp = {torch.float32: 1e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[dtype]
    assert torch.allclose(out.float(), expected.float(), rtol=ulp, atol=1e-6)


@pytest.mark.parametrize("rows,width,group", CASES)
def test_static_backward_ste_and_lsq(rows, width, group):
    x, scale, zero, qmin, qmax = _setup(rows, width, group, seed=1)
    grad = torch.randn_like(x)
    out = torch.full_like(x, float("nan"))
    out_scale = torch.full_like(scale, float("nan"))
    dx, ds = fake_quant_backward(grad, x, scale, zero, group, qmin, qmax, block_m=8, out=out, out_scale=out_scale)
    want_dx, want_ds = fake_quant_grads_reference(grad, x, scale, zero, group, qmin, qmax)
    assert not out.isnan().any() and not out_scale.isnan().any()
    assert torch.equal(dx, want_dx)
    assert torch.allclose(ds, want_ds, atol=1e-5, rtol=1e-5)
    assert (dx == 0).any() and (dx != 0).any()  # both clipped and passed-through elements were exercised


@pytest.mark.parametrize("rows,width,group,bits", [(5, 48, 24, 4), (9, 64, 64, 8), (3, 30, 10, 3),
                                                  (6, 2500, 2500, 8), (3, 20000, 20000, 8)])
# (the last two take the one-row-per-program kernel and the looped one)
def test_dynamic_forward(rows, width, group, bits):
    x = torch.randn(rows, width)
    out = torch.full_like(x, float("nan"))
    fake_quant_dynamic_forward(x, group, bits, block_m=4, out=out)
    assert torch.equal(out, fake_quant_dynamic_reference(x, group, bits))


def test_reference_equals_torch_fake_quantize_where_conventions_coincide():
    x = torch.randn(6, 40)
    scale = x.abs().amax(1) / 127
    zero = torch.zeros(6, dtype=torch.int32)
    want = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, -128, 127)
    got = fake_quant_reference(x, scale[:, None], zero[:, None].float(), 40, -128, 127)
    assert torch.equal(got, want)
    s, z = 0.05, 3
    want = torch.fake_quantize_per_tensor_affine(x, s, z, 0, 255)
    got = fake_quant_reference(x.reshape(1, -1), torch.full((1, 1), s), torch.full((1, 1), float(z)),
                               x.numel(), 0, 255).reshape(x.shape)
    assert torch.allclose(got, want, atol=1e-6)


def test_lsq_gradient_matches_autograd_through_the_formula():
    x, scale, zero, qmin, qmax = _setup(4, 16, 8, seed=2)
    scale = scale.double().requires_grad_()
    xs = x.double()
    # The LSQ step gradient is the derivative of (clamp(round(x/s)+z) − z)·s with round's derivative
    # taken as 0 (it is piecewise constant) — written here directly with a detached rounding.
    v = xs.reshape(4, 2, 8) / scale.unsqueeze(-1)
    level = torch.round(v).detach() + zero.double().unsqueeze(-1)
    clipped = torch.clamp(level, qmin, qmax)
    ste_round = v + (torch.round(v) - v).detach()
    q = torch.where((level >= qmin) & (level <= qmax), ste_round + zero.double().unsqueeze(-1), clipped)
    y = (q - zero.double().unsqueeze(-1)) * scale.unsqueeze(-1)
    grad = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, scale, grad)
    _, got = fake_quant_grads_reference(grad.reshape(4, 16).float(), x, scale.detach().float(), zero, 8, qmin, qmax)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_ops_and_autograd_on_cpu():
    x, scale, zero, qmin, qmax = _setup(3, 16, 8, seed=3)
    x = x.requires_grad_()
    scale = scale.requires_grad_()
    y = fake_quant(x.reshape(3, 1, 16), scale, zero, 8, qmin, qmax)
    assert torch.equal(y.reshape(3, 16), fake_quant_reference(x.detach(), scale.detach(), zero, 8, qmin, qmax))
    y.sum().backward()
    want_dx, want_ds = fake_quant_grads_reference(torch.ones(3, 16), x.detach(), scale.detach(), zero, 8, qmin, qmax)
    assert torch.equal(x.grad, want_dx) and torch.allclose(scale.grad, want_ds)
    x2 = torch.randn(2, 32, requires_grad=True)
    fake_quant_dynamic(x2, 16, 8).sum().backward()
    assert torch.equal(x2.grad, torch.ones_like(x2))
