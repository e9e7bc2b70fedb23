"""Gated-activation Triton kernels (CPU interpreter) against the torch reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from surgeon.kernels.gated_act.op import gated_act
from surgeon.kernels.gated_act.reference import ACTS, gated_act_backward_reference, gated_act_reference
from surgeon.kernels.gated_act.triton_kernel import gated_act_backward, gated_act_forward

SHAPES = [(1, 8), (37, 48), (5, 3, 200)]  # odd rows; widths that leave partial column tiles


def _inputs(shape, dtype, seed, fused=False):
    gen = torch.Generator().manual_seed(seed)
    if fused:  # the two halves of one (…, 2D) projection: strided views, not copies
        both = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen) * 2
        gate, up = both.to(dtype).chunk(2, dim=-1)
    else:
        gate = (torch.randn(*shape, generator=gen) * 2).to(dtype)
        up = torch.randn(*shape, generator=gen).to(dtype)
    m = torch.rand(shape[-1], generator=gen) + 0.5
    return gate, up, m


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("kind", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_m,fused", [(True, False), (False, True)])
def test_forward_matches_reference(shape, kind, dtype, tol, with_m, fused):
    gate, up, m = _inputs(shape, dtype, seed=len(shape), fused=fused)
    m = m if with_m else None
    out = torch.full(shape, float("nan"), dtype=dtype)
    gated_act_forward(gate, up, m, kind, block_m=16, block_n=32, out=out)
    want = gated_act_reference(gate, up, m, kind).float()
    assert not out.isnan().any()
    rel = (out.float() - want).norm() / want.norm()
    assert rel <= tol, rel


@pytest.mark.parametrize("kind", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_m", [True, False])
def test_backward_matches_autograd_of_the_reference(shape, kind, with_m):
    gate, up, m = _inputs(shape, torch.float32, seed=11, fused=not with_m)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(12))
    out_gate = torch.full(shape, float("nan"))
    out_up = torch.full(shape, float("nan"))
    dg, du, dm = gated_act_backward(grad, gate, up, m if with_m else None, kind, block_m=16, block_n=32,
                                    out_gate=out_gate, out_up=out_up)
    leaves = [t.double().requires_grad_() for t in ((gate, up, m) if with_m else (gate, up))]
    y = gated_act_reference(leaves[0], leaves[1], leaves[2] if with_m else None, kind)
    want = torch.autograd.grad(y, leaves, grad.double())
    assert not out_gate.isnan().any() and not out_up.isnan().any()
    assert dm is None if not with_m else dm.shape == m.shape
    for got, ref in zip((dg, du, dm), want):
        assert (got.double() - ref).norm() / ref.norm() <= 1e-5


@pytest.mark.parametrize("kind", ACTS)
def test_closed_form_backward_reference_equals_autograd(kind):
    gate, up, m = _inputs((7, 24), torch.float64, seed=3)
    m = m.double()
    grad = torch.randn(7, 24, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (gate, up, m)]
    want = torch.autograd.grad(gated_act_reference(*leaves, kind), leaves, grad)
    got = gated_act_backward_reference(grad, gate, up, m, kind)
    for a, b in zip(got, want):
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-6)


def test_op_autograd_and_export_on_cpu():
    gate, up, m = _inputs((4, 16), torch.float32, seed=5)
    leaves = [t.clone().requires_grad_() for t in (gate, up, m)]
    y = gated_act(*leaves, "silu")
    assert torch.equal(y, gated_act_reference(gate, up, m, "silu"))
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, grad)
    want = gated_act_backward_reference(grad, gate, up, m, "silu")
    assert all(torch.allclose(a, b) for a, b in zip(got, want))
    g2 = gate.clone().requires_grad_()
    (dg,) = torch.autograd.grad(gated_act(g2, up, None, "gelu"), [g2], grad)
    assert torch.allclose(dg, gated_act_backward_reference(grad, gate, up, None, "gelu")[0])

    class Glu(torch.nn.Module):
        def forward(self, g, u):
            return gated_act(g, u, None, "gelu_tanh")

    ep = torch.export.export(Glu(), (gate, up))
    assert any("surgeon.gated_act" in str(n.target) for n in ep.graph.nodes)
