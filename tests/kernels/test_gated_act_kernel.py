"""Gated-activation Triton kernels (CPU interpreter) against the torch reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from surgeon.kernels.gated_act.op import gated_act
from surgeon.kernels.gated_act.reference import ACTS, gated_act_backward_reference, gated_act_reference
from surgeon.kernels.gated_act.triton_kernel import gated_act_backward, gated_act_forward
from surgeon.kernels.group_rational.reference import group_rational_reference

SHAPES = [(1, 8), (37, 48), (5, 3, 200)]  # odd rows; widths that leave partial column tiles
PLAIN = tuple(k for k in ACTS if k != "rational")  # the kinds without coefficients
RATIONAL_SHAPES = [((37, 96), 8), ((5, 3, 200), 4), ((9, 40), 5)]  # (shape, groups): groups of 12, 50 and 8


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


def _coefficients(groups, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, generator=gen) * 0.5, torch.randn(groups, 4, generator=gen) * 0.5


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("kind", PLAIN)
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


@pytest.mark.parametrize("kind", PLAIN)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_m", [True, False])
def test_backward_matches_autograd_of_the_reference(shape, kind, with_m):
    gate, up, m = _inputs(shape, torch.float32, seed=11, fused=not with_m)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(12))
    out_gate = torch.full(shape, float("nan"))
    out_up = torch.full(shape, float("nan"))
    dg, du, dm, dn, dd = gated_act_backward(grad, gate, up, m if with_m else None, kind, block_m=16, block_n=32,
                                    out_gate=out_gate, out_up=out_up)
    leaves = [t.double().requires_grad_() for t in ((gate, up, m) if with_m else (gate, up))]
    y = gated_act_reference(leaves[0], leaves[1], leaves[2] if with_m else None, kind)
    want = torch.autograd.grad(y, leaves, grad.double())
    assert not out_gate.isnan().any() and not out_up.isnan().any()
    assert dm is None if not with_m else dm.shape == m.shape
    assert dn is None and dd is None
    for got, ref in zip((dg, du, dm), want):
        assert (got.double() - ref).norm() / ref.norm() <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", RATIONAL_SHAPES)
@pytest.mark.parametrize("with_m,fused", [(True, False), (False, True)])
def test_rational_forward_matches_reference(case, dtype, tol, with_m, fused):
    shape, groups = case
    gate, up, m = _inputs(shape, dtype, seed=groups, fused=fused)
    num, den = _coefficients(groups, seed=len(shape))
    m = m if with_m else None
    out = torch.full(shape, float("nan"), dtype=dtype)
    gated_act_forward(gate, up, m, "rational", num, den, block_m=16, block_n=32, out=out)
    want = gated_act_reference(gate, up, m, "rational", num, den).float()
    assert not out.isnan().any()
    assert (out.float() - want).norm() / want.norm() <= tol


def test_rational_reference_is_the_group_rational_times_up():
    gate, up, m = _inputs((6, 20), torch.float32, seed=2)
    num, den = _coefficients(5, seed=3)
    want = group_rational_reference(gate, num, den) * up * m
    assert torch.allclose(gated_act_reference(gate, up, m, "rational", num, den), want)


@pytest.mark.parametrize("case", RATIONAL_SHAPES)
@pytest.mark.parametrize("with_m", [True, False])
def test_rational_backward_matches_autograd_of_the_reference(case, with_m):
    shape, groups = case
    gate, up, m = _inputs(shape, torch.float32, seed=13, fused=not with_m)
    num, den = _coefficients(groups, seed=14)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(15))
    out_gate = torch.full(shape, float("nan"))
    out_up = torch.full(shape, float("nan"))
    dg, du, dm, dn, dd = gated_act_backward(grad, gate, up, m if with_m else None, "rational", num, den,
                                            block_m=16, block_n=32, out_gate=out_gate, out_up=out_up)
    leaves = [t.double().requires_grad_() for t in (gate, up, num, den, m)]
    y = gated_act_reference(leaves[0], leaves[1], leaves[4] if with_m else None, "rational", leaves[2], leaves[3])
    want = torch.autograd.grad(y, leaves if with_m else leaves[:4], grad.double())
    assert not out_gate.isnan().any() and not out_up.isnan().any()
    assert dn.shape == num.shape and dd.shape == den.shape and (dm is None) == (not with_m)
    for got, ref in zip((dg, du, dn, dd, dm), want):
        assert (got.double() - ref).norm() / ref.norm() <= 1e-5


@pytest.mark.parametrize("kind", ACTS)
def test_closed_form_backward_reference_equals_autograd(kind):
    gate, up, m = _inputs((7, 24), torch.float64, seed=3)
    m = m.double()
    coefficients = [t.double() for t in _coefficients(3, seed=4)] if kind == "rational" else []
    grad = torch.randn(7, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    leaves = [t.clone().requires_grad_() for t in (gate, up, m, *coefficients)]
    want = torch.autograd.grad(gated_act_reference(*leaves[:3], kind, *leaves[3:]), leaves, grad)
    got = [g for g in gated_act_backward_reference(grad, gate, up, m, kind, *coefficients) if g is not None]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        # the reference computes in float32: compare by norm (a denominator gradient sums terms up to 1e2
        # that cancel to 3e-2, so an element-wise rtol fails on float32 rounding alone)
        assert (a.double() - b).norm() / b.norm() <= 1e-5


def test_op_autograd_and_export_on_cpu():
    gate, up, m = _inputs((4, 16), torch.float32, seed=5)
    leaves = [t.clone().requires_grad_() for t in (gate, up, m)]
    y = gated_act(*leaves, "silu")
    assert torch.equal(y, gated_act_reference(gate, up, m, "silu"))
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, grad)
    want = gated_act_backward_reference(grad, gate, up, m, "silu")
    assert all(torch.allclose(a, b) for a, b in zip(got, want[:3]))
    g2 = gate.clone().requires_grad_()
    (dg,) = torch.autograd.grad(gated_act(g2, up, None, "gelu"), [g2], grad)
    assert torch.allclose(dg, gated_act_backward_reference(grad, gate, up, None, "gelu")[0])

    num, den = _coefficients(4, seed=6)
    leaves = [t.clone().requires_grad_() for t in (gate, up, num, den)]
    y = gated_act(leaves[0], leaves[1], None, "rational", leaves[2], leaves[3])
    assert torch.equal(y, gated_act_reference(gate, up, None, "rational", num, den))
    got = torch.autograd.grad(y, leaves, grad)
    want = gated_act_backward_reference(grad, gate, up, None, "rational", num, den)
    assert all(torch.allclose(a, b) for a, b in zip(got, (want[0], want[1], want[3], want[4])))

    class Glu(torch.nn.Module):
        def forward(self, g, u):
            return gated_act(g, u, None, "gelu_tanh")

    ep = torch.export.export(Glu(), (gate, up))
    assert any("surgeon.gated_act" in str(n.target) for n in ep.graph.nodes)

    class RationalGlu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num, self.den = torch.nn.Parameter(num), torch.nn.Parameter(den)

        def forward(self, g, u):
            return gated_act(g, u, None, "rational", self.num, self.den)

    ep = torch.export.export(RationalGlu(), (gate, up))
    assert [str(n.target) for n in ep.graph.nodes if n.op == "call_function"] == ["surgeon.gated_act.default"]


def test_coefficients_go_with_the_rational_kind_only():
    gate, up, _ = _inputs((2, 8), torch.float32, seed=7)
    num, den = _coefficients(2, seed=8)
    with pytest.raises(ValueError, match="required for 'rational' and only for it"):
        gated_act_reference(gate, up, None, "rational")
    with pytest.raises(ValueError, match="required for 'rational' and only for it"):
        gated_act_forward(gate, up, None, "silu", num, den)
