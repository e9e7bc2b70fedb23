"""Fourier, TruKAN, DARUAN (QKAN) and S-KAN layers against formulas written here, fits and float64 gradchecks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from surgeon.passes.kan.extra_basis import daruan, ordered_knots, uniform_knot_raw
from surgeon.passes.kan.extra_fit import fit_daruan, fit_group_basis
from surgeon.passes.kan.extra_layers import BasisKANLinear, GroupBasis, GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.layers import GroupBSpline

torch.set_num_threads(1)


def _random(layer: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape) * scale)
        for name, b in layer.named_buffers():
            if name.endswith("lo"):
                b.copy_(-1.5 - torch.rand(b.shape))
            elif name.endswith("hi"):
                b.copy_(1.0 + torch.rand(b.shape))
    return layer.double()


def u_of(v: float, lo: float, hi: float) -> float:
    return (2 * v - lo - hi) / (hi - lo)


def fourier_edge(v: float, lo: float, hi: float, coef: list[float], terms: int) -> float:
    """Σ_m a_m cos(m u) + b_m sin(m u) with u = π(2v − lo − hi)/(hi − lo), coefficients [a_1..a_G, b_1..b_G]."""
    u = math.pi * u_of(v, lo, hi)
    return sum(coef[m - 1] * math.cos(m * u) + coef[terms + m - 1] * math.sin(m * u) for m in range(1, terms + 1))


def trukan_edge(v: float, lo: float, hi: float, coef: list[float], knots: list[float], k: int) -> float:
    """Σ_{p=1..k} c_p u^p + Σ_m c_{k+m} max(u − t_m, 0)^k."""
    u = u_of(v, lo, hi)
    return sum(coef[p - 1] * u ** p for p in range(1, k + 1)) + sum(
        coef[k + m] * max(u - t, 0.0) ** k for m, t in enumerate(knots))


def test_fixed_knots_are_the_interior_of_a_uniform_grid_and_learned_knots_stay_ordered():
    fixed = ordered_knots(uniform_knot_raw((2,), 6).double())
    expected = torch.linspace(-1, 1, 8, dtype=torch.float64)[1:-1]
    assert torch.allclose(fixed, expected.expand(2, -1), atol=1e-3)
    raw = torch.randn(5, 7, dtype=torch.float64) * 4
    t = ordered_knots(raw)
    delta = torch.nn.functional.softplus(raw) + 1e-4
    assert torch.allclose(t, -1 + 2 * torch.cumsum(delta, -1)[:, :-1] / delta.sum(-1, keepdim=True))
    assert torch.all(t[:, 1:] > t[:, :-1]) and torch.all(t > -1) and torch.all(t < 1)


@pytest.mark.parametrize("basis,mode", [("fourier", "fixed"), ("trukan", "fixed"), ("trukan", "shared")])
def test_group_basis_matches_the_formula_per_group(basis, mode):
    layer = _random(GroupBasis(6, groups=2, basis=basis, terms=3, degree=3, knots=4, knot_mode=mode), seed=1)
    x = torch.randn(5, 6, dtype=torch.float64) * 2
    knots = layer.knot_values() if basis == "trukan" else None
    got = layer(x)
    for n in range(5):
        for c in range(6):
            g, v = c // 3, x[n, c].item()
            lo, hi, coef = layer.lo[g].item(), layer.hi[g].item(), layer.coef[g].tolist()
            edge = (fourier_edge(v, lo, hi, coef, 3) if basis == "fourier"
                    else trukan_edge(v, lo, hi, coef, knots[g].tolist(), 3))
            expected = layer.linear[g].item() * v + layer.const[g].item() + edge
            assert got[n, c].item() == pytest.approx(expected, abs=1e-10)


def test_pure_group_bases_start_as_identity_and_residual_as_their_base():
    x = torch.randn(4, 8)
    for basis in ("fourier", "trukan"):
        assert torch.equal(GroupBasis(8, 2, basis)(x), x)
        assert torch.equal(GroupBasis(8, 2, basis, base=nn.GELU())(x), nn.GELU()(x))
    assert torch.equal(GroupDaruan(8, 2, base=nn.SiLU())(x), nn.SiLU()(x))


@pytest.mark.parametrize("basis,mode", [("fourier", "fixed"), ("trukan", "shared"), ("trukan", "individual")])
def test_basis_kan_linear_sums_its_edge_functions(basis, mode):
    layer = _random(BasisKANLinear(3, 2, basis, terms=2, degree=2, knots=3, knot_mode=mode), seed=2)
    x = torch.randn(4, 3, dtype=torch.float64) * 2
    got = layer(x)
    knots = layer.knot_values() if basis == "trukan" else None
    for n in range(4):
        for j in range(2):
            total = layer.bias[j].item()
            for i in range(3):
                v, lo, hi = x[n, i].item(), layer.lo[i].item(), layer.hi[i].item()
                coef = layer.coef[j, i].tolist()
                total += layer.weight[j, i].item() * v
                if basis == "fourier":
                    total += fourier_edge(v, lo, hi, coef, 2)
                else:
                    t = (knots[j, i] if mode == "individual" else knots[i]).tolist()
                    total += trukan_edge(v, lo, hi, coef, t, 2)
            assert got[n, j].item() == pytest.approx(total, abs=1e-10)


def circuit_z(v: float, theta: torch.Tensor, w: torch.Tensor, b: torch.Tensor, reps: int, fast: bool) -> float:
    """⟨Z⟩ of H|0⟩ → [RZ(θ_l0), RY(θ_l1), RZ(w_l v + b_l)]_l → RZ(θ_r0), RY(θ_r1), as complex 2x2 matrices."""
    def rz(a):
        return torch.tensor([[complex(math.cos(a / 2), -math.sin(a / 2)), 0], [0, complex(math.cos(a / 2), math.sin(a / 2))]],
                            dtype=torch.complex128)

    def ry(a):
        return torch.tensor([[math.cos(a / 2), -math.sin(a / 2)], [math.sin(a / 2), math.cos(a / 2)]], dtype=torch.complex128)

    psi = torch.tensor([1, 1], dtype=torch.complex128) / math.sqrt(2)
    for layer in range(reps):
        psi = rz(w[layer].item() * v + b[layer].item()) @ ry(theta[layer, 1].item()) @ rz(theta[layer, 0].item()) @ psi
    psi = ry(theta[reps, 1].item()) @ rz(theta[reps, 0].item()) @ psi
    pz = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.complex128))
    if fast:
        return float(psi[0].abs() - psi[1].abs())
    return float((psi.conj() @ pz @ psi).real)


@pytest.mark.parametrize("fast", [False, True])
def test_daruan_matches_the_circuit_as_matrices(fast):
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(4, 2, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.linspace(-4, 4, 25, dtype=torch.float64)
    got = daruan(x, theta, w, b, 3, fast)
    for n, v in enumerate(x.tolist()):
        assert got[n].item() == pytest.approx(circuit_z(v, theta, w, b, 3, fast), abs=1e-12)


def test_daruan_with_fixed_encoding_is_a_trigonometric_polynomial_of_degree_reps():
    # With w = 1, b = 0 the spectrum is {−r..r}/… : the DFT over one 4π period has no higher harmonics.
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x = torch.arange(64, dtype=torch.float64) * 4 * math.pi / 64
    z = daruan(x, theta, torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 2)
    spectrum = torch.fft.rfft(z).abs()
    # frequency ω (in units of x) sits at bin 2ω; ω ∈ {0, 1/2, 1, ...} up to r·… : ⟨Z⟩ holds |ω| ≤ reps
    assert spectrum[2 * 2 + 1:].max() < 1e-10 * spectrum.max()


def test_group_daruan_and_qkan_linear_match_the_circuit():
    act = _random(GroupDaruan(4, groups=2, reps=2), seed=5)
    x = torch.randn(3, 4, dtype=torch.float64)
    got = act(x)
    for n in range(3):
        for c in range(4):
            gi, v = c // 2, x[n, c].item()
            z = circuit_z(v, act.theta[gi], act.pre_w[gi], act.pre_b[gi], 2, False)
            expected = act.post_w[gi].item() * (z + act.post_b[gi].item()) + act.base_w[gi].item() * v / (1 + math.exp(-v))
            assert got[n, c].item() == pytest.approx(expected, abs=1e-10)
    layer = _random(QKANLinear(3, 2, reps=2), seed=6)
    x = torch.randn(2, 3, dtype=torch.float64)
    got = layer(x)
    for n in range(2):
        for j in range(2):
            total = layer.bias[j].item()
            for i in range(3):
                v = x[n, i].item()
                z = circuit_z(v, layer.theta[j, i], layer.pre_w[j, i], layer.pre_b[j, i], 2, False)
                total += layer.post_w[j, i].item() * (z + layer.post_b[j, i].item())
                total += layer.base_w[j, i].item() * v / (1 + math.exp(-v)) + layer.weight[j, i].item() * v
            assert got[n, j].item() == pytest.approx(total, abs=1e-10)


def test_preact_trainable_false_freezes_the_encoding():
    act = GroupDaruan(4, 2, reps=2, preact_trainable=False)
    assert not act.pre_w.requires_grad and not act.pre_b.requires_grad and act.theta.requires_grad


def test_selectable_is_the_weighted_sum_of_its_candidates_and_prune_keeps_one():
    cands = [_random(GroupBasis(4, 2, "fourier", terms=2), 7), _random(GroupBSpline(4, 2), 8).float().double()]
    mix = Selectable(cands, ["fourier", "bspline"], rows=2, groups=2).double()
    with torch.no_grad():
        mix.mix.copy_(torch.tensor([[0.3, -0.7], [1.1, 0.2]]))
    x = torch.randn(5, 4, dtype=torch.float64)
    per_channel = torch.tensor([[0.3, 0.3, -0.7, -0.7], [1.1, 1.1, 0.2, 0.2]], dtype=torch.float64)
    expected = per_channel[0] * cands[0](x) + per_channel[1] * cands[1](x)
    assert torch.allclose(mix(x), expected, atol=1e-12)
    assert mix.strengths().argmax().item() == 1
    mix.prune(1)
    assert mix.names == ["bspline"] and torch.allclose(mix(x), per_channel[1] * cands[1](x), atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: GroupBasis(4, 2, "fourier", terms=3), lambda: GroupBasis(4, 2, "trukan", knots=3, knot_mode="shared"),
    lambda: BasisKANLinear(3, 2, "trukan", knots=3, knot_mode="individual"), lambda: BasisKANLinear(3, 2, "fourier"),
    lambda: GroupDaruan(4, 2, reps=2), lambda: GroupDaruan(4, 2, reps=2, fast=True), lambda: QKANLinear(3, 2, reps=2),
    lambda: Selectable([GroupBasis(4, 2, "fourier"), GroupDaruan(4, 2, reps=1)], ["fourier", "daruan"], 2, 2)],
    ids=["fourier", "trukan-shared", "kan-trukan-individual", "kan-fourier", "daruan", "daruan-fast", "qkan", "select"])
def test_gradcheck_float64(make):
    layer = _random(make(), seed=9)
    width = layer.in_features if hasattr(layer, "in_features") else 4
    # Away from the truncated powers' knots is not needed (k = 3 is C²); inputs inside the range.
    x = (torch.rand(3, width, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(dict(layer.named_parameters())[n] for n in names)

    def call(inp, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (inp,))

    assert torch.autograd.gradcheck(call, (x, *params), eps=1e-6, atol=1e-6)


def test_fourier_and_trukan_fits_reproduce_functions_in_their_span():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(2, 3000, generator=g, dtype=torch.float64) * torch.tensor([[1.0], [5.0]])
    trukan = GroupBasis(6, 2, "trukan", degree=3, knots=5).double()
    fit_group_basis(trukan, samples, lambda v: v ** 3 - 2 * v)  # a cubic: in the polynomial part exactly
    x = samples.T.repeat_interleave(3, 1)
    assert torch.allclose(trukan(x), x ** 3 - 2 * x, atol=1e-6 * float(x.abs().max() ** 3))
    fourier = GroupBasis(6, 2, "fourier", terms=5).double()
    fit_group_basis(fourier, samples, nn.GELU())
    assert (fourier.hi - fourier.lo > samples.amax(1) - samples.amin(1)).all()  # range set to the samples'
    err = (fourier(x) - nn.GELU()(x)).norm() / nn.GELU()(x).norm()
    assert err < 0.03  # GELU's kink is not periodic: Fourier converges slowly (measured 0.024)
    periodic = GroupBasis(6, 2, "fourier", terms=2).double()  # sin(u) + 0.5 cos(2u) + x is in the span exactly
    fit_group_basis(periodic, samples, lambda v: v)
    target = lambda v: v + torch.sin(math.pi * (2 * v - periodic.lo[0] - periodic.hi[0]) / (periodic.hi[0] - periodic.lo[0]))
    fit_group_basis(periodic, samples[:1].expand(2, -1), target)
    xs = samples[0][:, None].expand(-1, 6)
    assert torch.allclose(periodic(xs), target(xs), atol=1e-8)


def test_daruan_fit_recovers_a_circuit_function():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2000, generator=g, dtype=torch.float64)
    theta = torch.randn(3, 2, generator=g, dtype=torch.float64)
    target_fn = lambda v: 0.8 * daruan(v, theta, torch.tensor([1.3, 0.7], dtype=torch.float64),
                                       torch.tensor([0.2, -0.4], dtype=torch.float64), 2) + 0.1
    fitted = fit_daruan(x, target_fn, reps=2, preact_trainable=True, fast=False, seed=3, iters=300)
    act = GroupDaruan(1, 1, reps=2).double()
    with torch.no_grad():
        for k, v in fitted.items():
            getattr(act, k).copy_(v)
    err = (act(x.T) - target_fn(x.T)).norm() / target_fn(x.T).norm()
    assert err < 0.05
    gelu_fit = fit_daruan(x, nn.GELU(), reps=2, preact_trainable=True, fast=False)
    act2 = GroupDaruan(1, 1, reps=2).double()
    with torch.no_grad():
        for k, v in gelu_fit.items():
            getattr(act2, k).copy_(v)
    assert (act2(x.T) - nn.GELU()(x.T)).norm() / nn.GELU()(x.T).norm() < 0.02
