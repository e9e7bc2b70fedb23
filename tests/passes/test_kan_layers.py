"""KAN-family layers against formulas re-implemented here, and float64 gradchecks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from surgeon.passes.kan import BSplineKANLinear, GroupBSpline, GroupRational, RationalKANLinear
from surgeon.passes.kan.basis import adaptive_knots, bspline_basis, extend_knots
from surgeon.passes.kan.fit import gaussian_gain, rational_fit, spline_fit

torch.set_num_threads(1)


def cox_de_boor(x: float, t: list[float], m: int, p: int) -> float:
    """B^p_m(x) by the textbook recursion, one scalar at a time."""
    if p == 0:
        return 1.0 if t[m] <= x < t[m + 1] else 0.0
    left = (x - t[m]) / (t[m + p] - t[m]) * cox_de_boor(x, t, m, p - 1)
    right = (t[m + p + 1] - x) / (t[m + p + 1] - t[m + 1]) * cox_de_boor(x, t, m + 1, p - 1)
    return left + right


def random_knots(channels: int, grid: int, order: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    points = torch.cumsum(torch.rand(channels, grid + 1, generator=g, dtype=torch.float64) + 0.2, 1) - 2.0
    return extend_knots(points, order)


@pytest.mark.parametrize("grid,order", [(5, 3), (3, 1), (7, 2), (4, 0)])
def test_vectorised_basis_equals_the_cox_de_boor_loop(grid, order):
    knots = random_knots(3, grid, order, seed=grid * 10 + order)
    x = torch.linspace(-5, 8, 97, dtype=torch.float64)[:, None].expand(-1, 3) + torch.tensor([0.0, 0.013, -0.021])
    got = bspline_basis(x, knots, order)
    assert got.shape == (97, 3, grid + order)
    for c in range(3):
        t = knots[c].tolist()
        for n in range(97):
            for m in range(grid + order):
                assert got[n, c, m].item() == pytest.approx(cox_de_boor(x[n, c].item(), t, m, order), abs=1e-12)


def test_basis_is_a_partition_of_unity_inside_the_grid_and_zero_outside():
    knots = random_knots(2, 5, 3, seed=1)
    inside = knots[:, 3] + (knots[:, -4] - knots[:, 3]) * torch.rand(50, 2, dtype=torch.float64)
    assert torch.allclose(bspline_basis(inside, knots, 3).sum(-1), torch.ones(50, 2, dtype=torch.float64))
    outside = knots[:, -1] + 1.0
    assert torch.all(bspline_basis(outside[None, :], knots, 3) == 0)


def test_adaptive_knots_are_blended_quantiles_extended_by_the_mean_step():
    samples = torch.randn(1000, 2, dtype=torch.float64) * torch.tensor([1.0, 4.0])
    knots = adaptive_knots(samples, 4, 3, grid_eps=0.0)
    q = torch.quantile(samples, torch.linspace(0, 1, 5, dtype=torch.float64), dim=0).T
    assert torch.allclose(knots[:, 3:8], q, atol=1e-5)
    step = (q[:, -1] - q[:, 0]) / 4
    assert torch.allclose(knots[:, 8] - knots[:, 7], step, atol=1e-5)
    assert torch.allclose(knots[:, 3] - knots[:, 2], step, atol=1e-5)


def rational_reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KAT's kernel form, written out per channel: P = Σ a_i x^i, Q = 1 + Σ_j |b_gj| |x|^j, g = c // (C/G)."""
    width = x.shape[-1] // b.shape[0]
    out = torch.empty_like(x)
    for c in range(x.shape[-1]):
        xc = x[..., c]
        p = sum(a[i] * xc ** i for i in range(6))
        q = 1 + sum(b[c // width, j - 1].abs() * xc.abs() ** j for j in range(1, 5))
        out[..., c] = p / q
    return out


def test_group_rational_matches_the_kernel_formula_per_group():
    torch.manual_seed(0)
    layer = GroupRational(16, groups=4).double()
    with torch.no_grad():
        layer.numerator.copy_(torch.randn(6))
        layer.denominator.copy_(torch.randn(4, 4))  # negative b_j: the kernel takes |b_j|
    x = torch.randn(3, 5, 16, dtype=torch.float64) * 3
    assert torch.allclose(layer(x), rational_reference(x, layer.numerator, layer.denominator), rtol=1e-12)
    # Not the torch reference's signed odd powers 1 + Σ|b_j| x^j: the two differ wherever x < 0.
    x0, a, b = x[..., 0], layer.numerator, layer.denominator[0]
    signed = sum(a[i] * x0 ** i for i in range(6)) / (1 + sum(b[j - 1].abs() * x0 ** j for j in range(1, 5)))
    negative = x0 < 0
    assert not torch.allclose(layer(x)[..., 0][negative], signed[negative])
    assert torch.allclose(layer(x)[..., 0][~negative], signed[~negative])


def test_pure_rational_starts_as_identity_and_residual_as_its_base():
    x = torch.randn(4, 24)
    assert torch.equal(GroupRational(24, 8)(x), x)
    assert torch.equal(GroupRational(24, 8, base=nn.GELU())(x), nn.GELU()(x))
    assert torch.equal(GroupBSpline(24, 8, base=nn.SiLU())(x), nn.SiLU()(x))


def test_group_bspline_matches_silu_plus_spline_per_group():
    torch.manual_seed(1)
    layer = GroupBSpline(8, groups=2, grid=4, order=3).double()
    with torch.no_grad():
        layer.knots.copy_(random_knots(2, 4, 3, seed=3))
        layer.silu.copy_(torch.randn(2))
        layer.coef.copy_(torch.randn(2, 7))
    x = torch.randn(6, 8, dtype=torch.float64) * 2
    expected = torch.empty_like(x)
    for n in range(6):
        for c in range(8):
            g, v = c // 4, x[n, c].item()
            spline = sum(layer.coef[g, m].item() * cox_de_boor(v, layer.knots[g].tolist(), m, 3) for m in range(7))
            expected[n, c] = layer.silu[g].item() * v / (1 + math.exp(-v)) + spline
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_bspline_kan_linear_sums_its_edge_functions():
    torch.manual_seed(2)
    for residual in (False, True):
        layer = BSplineKANLinear(3, 2, grid=3, order=2, residual=residual).double()
        with torch.no_grad():
            layer.knots.copy_(random_knots(3, 3, 2, seed=5))
            for p in (layer.base_weight, layer.spline_weight, layer.bias):
                p.copy_(torch.randn(p.shape))
        x = torch.randn(4, 3, dtype=torch.float64)
        expected = torch.zeros(4, 2, dtype=torch.float64)
        for n in range(4):
            for j in range(2):
                total = layer.bias[j].item()
                for i in range(3):
                    v = x[n, i].item()
                    base = v if residual else v / (1 + math.exp(-v))
                    total += layer.base_weight[j, i].item() * base
                    total += sum(layer.spline_weight[j, i, m].item() * cox_de_boor(v, layer.knots[i].tolist(), m, 2)
                                 for m in range(5))
                expected[n, j] = total
        assert torch.allclose(layer(x), expected, atol=1e-12)


def _randomised(layer: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.5 + (0.3 if "denominator" in name else 0.0))
    return layer.double()


@pytest.mark.parametrize("make", [
    lambda: GroupRational(8, 2), lambda: GroupRational(8, 4, base=nn.GELU()),
    lambda: GroupBSpline(8, 2, grid=4, order=3), lambda: BSplineKANLinear(4, 3, grid=4, order=3),
    lambda: RationalKANLinear(4, 3, groups=2)], ids=["rational", "rational-res", "bspline", "kan-bspline", "kan-rat"])
def test_gradcheck_float64(make):
    layer = _randomised(make(), seed=7)
    width = 8 if not isinstance(layer, (BSplineKANLinear, RationalKANLinear)) else 4
    # Inputs away from 0 (|x| is not differentiable there) and inside the grid.
    x = (torch.rand(3, width, dtype=torch.float64) * 0.8 + 0.1) * torch.tensor([1.0, -1.0]).repeat(width // 2)
    x.requires_grad_(True)
    params = tuple(p for p in layer.parameters())
    assert torch.autograd.gradcheck(lambda inp, *ps: _call(layer, ps, inp), (x, *params), eps=1e-6, atol=1e-6)


def _call(layer, params, x):
    return torch.func.functional_call(layer, {n: p for (n, _), p in zip(layer.named_parameters(), params)}, (x,))


def test_rational_fit_weighted_by_samples_beats_a_fixed_range_fit_on_heavy_tails():
    g = torch.Generator().manual_seed(0)
    samples = torch.cat([torch.randn(2, 3000, generator=g, dtype=torch.float64),
                         torch.randn(2, 100, generator=g, dtype=torch.float64) * 8], dim=1)  # (groups, N)
    target = nn.GELU()(samples.T)
    num, den = rational_fit(samples, nn.GELU())
    weighted = float((rational_reference(samples.T, num, den) - target).norm() / target.norm())
    fixed_num, fixed_den = rational_fit(torch.linspace(-3, 3, 2000, dtype=torch.float64)[None], nn.GELU())
    fixed = rational_reference(samples.T, fixed_num, fixed_den.expand(2, -1))
    fixed_err = float((fixed - target).norm() / target.norm())
    # (5, 4) with |x| powers has one asymptotic slope on both sides, so GELU's tails bound the error.
    assert weighted < 0.05 and fixed_err > 20 * weighted


def test_spline_fit_reproduces_a_cubic_inside_the_grid():
    x = torch.linspace(-2, 2, 400, dtype=torch.float64)[:, None]
    knots = adaptive_knots(x, 6, 3)
    w, c = spline_fit(x, knots, 3, lambda v: v ** 3)
    inside = torch.linspace(-1.9, 1.9, 50, dtype=torch.float64)[:, None]
    approx = w * torch.nn.functional.silu(inside) + (bspline_basis(inside, knots, 3) * c).sum(-1)
    assert torch.allclose(approx, inside ** 3, atol=1e-4)  # cubic splines hold cubics exactly


def test_gaussian_gain_matches_quadrature():
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
    for fn in (nn.SiLU(), nn.GELU(), lambda v: v):
        expected = math.sqrt(float(torch.trapezoid(fn(x) ** 2 * density, x)))
        assert gaussian_gain(fn) == pytest.approx(expected, rel=1e-2)
