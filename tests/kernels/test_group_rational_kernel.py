"""Group-rational Triton kernels (CPU interpreter) against the torch reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from surgeon.kernels.group_rational.op import group_rational
from surgeon.kernels.group_rational.reference import (
    group_rational_backward_reference,
    group_rational_reference,
)
from surgeon.kernels.group_rational.triton_kernel import group_rational_backward, group_rational_forward

SHAPES = [(1, 8, 2), (37, 48, 4), (5, 3, 200, 8)]  # (..., D, groups): odd rows, groups of 6, 25 and 12


def _coefficients(groups, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, generator=gen), torch.randn(groups, 4, generator=gen)


def _input(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 2.5).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", SHAPES)
def test_forward_matches_reference_and_writes_every_element(case, dtype, tol):
    *shape, groups = case
    x = _input(shape, dtype, seed=len(shape) + groups)
    a, b = _coefficients(groups, seed=groups)
    out = torch.full_like(x, float("nan"))
    group_rational_forward(x, a, b, block_m=16, block_n=16, out=out)
    expected = group_rational_reference(x.float(), a, b)
    assert not out.isnan().any()
    rel = (out.float() - expected).norm() / expected.norm()
    assert rel <= tol, rel


@pytest.mark.parametrize("case", SHAPES)
def test_backward_matches_autograd_of_the_reference(case):
    *shape, groups = case
    x = _input(shape, torch.float32, seed=7)
    a, b = _coefficients(groups, seed=3)
    grad = _input(shape, torch.float32, seed=8)
    out = torch.full_like(x, float("nan"))
    dx, da, db = group_rational_backward(grad, x, a, b, block_m=16, block_n=16, out=out)
    leaves = [t.double().requires_grad_() for t in (x, a, b)]
    expected = torch.autograd.grad(group_rational_reference(*leaves), leaves, grad.double())
    assert not out.isnan().any() and dx.data_ptr() == out.data_ptr()
    for got, want in zip((dx, da, db), expected):
        assert (got.double() - want).norm() / want.norm() <= 1e-5


def test_closed_form_backward_reference_equals_autograd():
    x = _input((5, 12), torch.float32, seed=4)
    a, b = _coefficients(3, seed=5)
    grad = _input((5, 12), torch.float32, seed=6)
    leaves = [t.double().requires_grad_() for t in (x, a, b)]
    expected = torch.autograd.grad(group_rational_reference(*leaves), leaves, grad.double())
    for got, want in zip(group_rational_backward_reference(grad, x, a, b), expected):
        assert (got.double() - want).norm() / want.norm() <= 1e-5


def test_op_on_cpu_matches_the_reference_with_gradients():
    x = _input((3, 16), torch.float32, seed=1).requires_grad_()
    a, b = [t.requires_grad_() for t in _coefficients(4, seed=2)]
    y = group_rational(x, a, b)
    assert torch.equal(y, group_rational_reference(x.detach(), a.detach(), b.detach()))
    y.backward(torch.ones_like(y))
    want = group_rational_backward_reference(torch.ones_like(y), x.detach(), a.detach(), b.detach())
    for got, w in zip((x.grad, a.grad, b.grad), want):
        assert torch.allclose(got, w)


def test_op_is_a_single_node_under_export():
    class Act(torch.nn.Module):
        def __init__(self):
            super().__init__()
            a, b = _coefficients(2, seed=0)
            self.a, self.b = torch.nn.Parameter(a), torch.nn.Parameter(b)

        def forward(self, x):
            return group_rational(x, self.a, self.b)

    exported = torch.export.export(Act(), (torch.randn(4, 8),))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets == ["surgeon.group_rational.default"]
