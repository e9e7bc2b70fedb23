"""B-spline basis Triton kernels (CPU interpreter) against the torch reference and the KAN layers' basis."""

from __future__ import annotations

import pytest
import torch

from surgeon.kernels.bspline_basis.op import bspline_basis
from surgeon.kernels.bspline_basis.reference import bspline_basis_backward_reference, bspline_basis_reference
from surgeon.kernels.bspline_basis.triton_kernel import bspline_basis_backward, bspline_basis_forward
from surgeon.passes.kan.basis import adaptive_knots, bspline_basis as kan_bspline_basis

# (x shape, knot vectors K, grid G, order k): per-channel knots (K = C) and grouped knots (K | C), odd sizes.
CASES = [((37, 12), 12, 5, 3), ((5, 3, 40), 8, 4, 2), ((9, 7), 7, 3, 1), ((6, 5), 5, 2, 5)]


def _knots(rows: int, grid: int, order: int, seed: int) -> torch.Tensor:
    """Non-uniform knots as the KAN pass adapts them: quantiles of skewed samples, extended by ``order``."""
    gen = torch.Generator().manual_seed(seed)
    samples = torch.randn(64, rows, generator=gen).exp() - 1.2
    return adaptive_knots(samples, grid, order).float()


def _x(shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 1.5).to(dtype)  # a share of points falls outside the grid


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference_and_writes_every_element(case, dtype, tol):
    shape, rows, grid, order = case
    x = _x(shape, seed=rows, dtype=dtype)
    knots = _knots(rows, grid, order, seed=grid)
    out = torch.full((*shape, grid + order), float("nan"), dtype=dtype)
    got = bspline_basis_forward(x, knots, order, block_m=16, block_c=16, out=out)
    want = bspline_basis_reference(x, knots, order)
    assert got.shape == want.shape == (*shape, grid + order) and not out.isnan().any()
    assert got.data_ptr() == out.data_ptr()
    # Absolute: bases lie in [0, 1] and sum to 1 inside the grid (0 outside), so this is relative too.
    assert (got.float() - want.float()).abs().max() <= tol


def test_reference_is_the_kan_layers_basis():
    x = _x((11, 6), seed=1)
    knots = _knots(3, 5, 3, seed=2)
    per_channel = knots.repeat_interleave(2, dim=0)
    assert torch.equal(bspline_basis_reference(x, knots, 3), kan_bspline_basis(x, per_channel, 3))


def test_points_outside_the_grid_have_no_basis():
    knots = _knots(4, 5, 3, seed=3)
    x = torch.stack([knots[:, 0] - 0.5, knots[:, -1] + 0.5, knots[:, -1]])  # (3, 4): below, above, last knot
    assert torch.equal(bspline_basis_forward(x, knots, 3), torch.zeros(3, 4, 8))


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_autograd_of_the_reference(case):
    shape, rows, grid, order = case
    x = _x(shape, seed=5)
    knots = _knots(rows, grid, order, seed=6)
    grad = torch.randn(*shape, grid + order, generator=torch.Generator().manual_seed(7))
    out = torch.full(shape, float("nan"))
    dx = bspline_basis_backward(grad, x, knots, order, block_m=16, block_c=16, out=out)
    xd = x.double().requires_grad_()
    (want,) = torch.autograd.grad(bspline_basis_reference(xd, knots.double(), order), xd, grad.double())
    assert not out.isnan().any() and dx.data_ptr() == out.data_ptr()
    assert (dx.double() - want).norm() / want.norm() <= 1e-5


def test_closed_form_backward_reference_equals_autograd():
    x = _x((13, 6), seed=8).double()
    knots = _knots(6, 5, 3, seed=9).double()
    grad = torch.randn(13, 6, 8, dtype=torch.float64)
    xd = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(bspline_basis_reference(xd, knots, 3), xd, grad)
    assert torch.allclose(bspline_basis_backward_reference(grad, x, knots, 3), want, rtol=1e-9, atol=1e-12)


def test_op_on_cpu_autograd_and_export():
    x = _x((4, 6), seed=10).requires_grad_()
    knots = _knots(2, 5, 3, seed=11)
    y = bspline_basis(x, knots, 3)
    assert torch.equal(y, bspline_basis_reference(x.detach(), knots, 3))
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(dx, bspline_basis_backward_reference(grad, x.detach(), knots, 3))

    class Basis(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("knots", knots)

        def forward(self, v):
            return bspline_basis(v, self.knots, 3)

    exported = torch.export.export(Basis(), (x.detach(),))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets == ["surgeon.bspline_basis.default"]


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="not a divisor"):
        bspline_basis_reference(torch.zeros(2, 6), torch.zeros(4, 12), 3)
    with pytest.raises(ValueError, match="orders 0..5"):
        bspline_basis_forward(torch.zeros(2, 6), torch.zeros(6, 20), 6)
