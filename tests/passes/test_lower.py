"""The ``lower`` pass: lowered models equal unlowered ones, ops appear in exports, skips are reported."""

from __future__ import annotations

import copy

import pytest
import torch

import surgeon
from surgeon.passes import KAN, FakeQuant, Lower
from surgeon.passes.kan.layers import BSplineKANLinear, GroupBSpline, GroupRational
from surgeon.passes.lower import LoweredBSplineKANLinear, LoweredGroupBSpline, LoweredGroupRational, LoweredQuantizer
from surgeon.passes.lower.layers import share
from surgeon.passes.lower.table import row_named
from surgeon.passes.quant.quantizers import Quantizer
from surgeon.runner import output_tensors, run_model


def _outputs(model, seed=3):
    batch = surgeon.example_inputs(model, batch=2, seq=7, seed=seed)
    with torch.no_grad():
        return output_tensors(run_model(model, batch))


def _lowered_equals_unlowered(model, steps, kinds):
    surgeon.apply(model, steps)
    before = copy.deepcopy(model)
    surgeon.apply(model, [Lower()])
    lowered = [m for m in model.modules() if isinstance(m, kinds)]
    assert lowered, "nothing was lowered"
    want, got = _outputs(before), _outputs(model)
    for key in want:
        assert torch.allclose(got[key], want[key], rtol=1e-5, atol=1e-6), key
    return model


def test_kan_then_lower_equals_kan():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    model = _lowered_equals_unlowered(model, [KAN(form="pure")], LoweredGroupRational)
    assert not any(type(m) is GroupRational for m in model.modules())


@pytest.mark.parametrize("weight,input", [("int4-asym-g16-lwc", "int8-sym-token"), ("int4-sym-channel", "int8-g16"),
                                          ("int8-asym-tensor", "none")])
def test_fake_quant_then_lower_equals_fake_quant(weight, input):
    model = surgeon.load_model("tiny-llama", num_layers=1)
    model = _lowered_equals_unlowered(model, [FakeQuant(weight=weight, input=input)], LoweredQuantizer)
    assert not any(type(m) is Quantizer for m in model.modules())


def test_gradients_match_after_lowering_asymmetric_lwc():
    # The zero point of an asymmetric LWC grid carries a gradient the op does not return; the lowered
    # module adds it, so training gradients equal the layer's.
    q = Quantizer("int4-asym-g8-lwc", "weight", (6, 16))
    with torch.no_grad():
        q.upper.fill_(0.5)  # clip hard, so clipped elements (where the zero gradient lives) exist
        q.lower.fill_(0.3)
    lowered = share(q, LoweredQuantizer)
    w = torch.randn(6, 16, requires_grad=True)
    g = torch.randn(6, 16)
    want = torch.autograd.grad(q(w), [w, q.upper, q.lower], g)
    got = torch.autograd.grad(lowered(w), [w, lowered.upper, lowered.lower], g)
    assert lowered.upper is q.upper  # shared, not copied
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert want[1].abs().sum() > 0


@pytest.mark.parametrize("weight,input,reason", [("fp8e4m3-channel", "int8-sym-token", "only integer grids"),
                                                 ("int4-sym-channel", "int8-asym-token", "symmetric only")])
def test_skip_reasons_are_reported(weight, input, reason):
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [FakeQuant(weight=weight, input=input), Lower(ops=("fake_quant",))])
    rep = surgeon.report(model)[-1]
    assert rep.matched and any(reason in r for _, r in rep.skipped), rep.skipped


def test_op_is_a_node_in_export():
    layer = share(GroupRational(16, groups=4), LoweredGroupRational)
    ep = torch.export.export(layer, (torch.randn(3, 16),))
    assert any("surgeon.group_rational" in str(n.target) for n in ep.graph.nodes)
    q = share(Quantizer("int4-sym-g8", "weight", (4, 16)), LoweredQuantizer)
    ep = torch.export.export(q, (torch.randn(4, 16),))
    assert any("surgeon.fake_quant" in str(n.target) for n in ep.graph.nodes)


def test_lowered_model_saves_and_reloads(tmp_path):
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [KAN(), Lower()])
    surgeon.save(model, tmp_path / "m")
    loaded = surgeon.load(tmp_path / "m")
    assert any(isinstance(m, LoweredGroupRational) for m in loaded.modules())
    a, b = _outputs(model), _outputs(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lowered_group_rational_gradients_equal_the_layers():
    layer = GroupRational(24, groups=3)
    with torch.no_grad():
        layer.numerator.copy_(torch.randn(6))
        layer.denominator.copy_(torch.randn(3, 4))
    lowered = share(layer, LoweredGroupRational)
    x = torch.randn(5, 24, requires_grad=True)
    g = torch.randn(5, 24)
    want = torch.autograd.grad(layer(x), [x, layer.numerator, layer.denominator], g)
    got = torch.autograd.grad(lowered(x), [x, lowered.numerator, lowered.denominator], g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _randomise_splines(model, seed=0):
    # Residual-form splines start at zero coefficients; random ones make the spline part count.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("coef", "silu", "spline_weight", "base_weight"):
                if isinstance(m, (GroupBSpline, BSplineKANLinear)) and hasattr(m, name):
                    p = getattr(m, name)
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("structure,kind", [("kat", LoweredGroupBSpline), ("kan", LoweredBSplineKANLinear)])
def test_kan_bspline_then_lower_equals_kan(structure, kind):
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [KAN(basis="bspline", structure=structure)])
    _randomise_splines(model)
    before = copy.deepcopy(model)
    surgeon.apply(model, [Lower(ops=("bspline_basis",))])
    assert any(isinstance(m, kind) for m in model.modules())
    assert not any(type(m) in (GroupBSpline, BSplineKANLinear) for m in model.modules())
    want, got = _outputs(before), _outputs(model)
    for key in want:
        assert torch.allclose(got[key], want[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("layer", [GroupBSpline(24, groups=3, grid=4, order=3, base=torch.nn.SiLU()),
                                   BSplineKANLinear(12, 10, grid=5, order=2)])
def test_lowered_bspline_layers_compute_the_layers_values_and_gradients(layer):
    _randomise_splines(layer, seed=1)
    with torch.no_grad():  # non-uniform knots, as the pass adapts them
        layer.knots.mul_(torch.linspace(0.8, 1.3, layer.knots.shape[1]))
    lowered = share(layer, LoweredGroupBSpline if isinstance(layer, GroupBSpline) else LoweredBSplineKANLinear)
    width = layer.width if isinstance(layer, GroupBSpline) else layer.in_features
    x = (torch.randn(5, 2, width) * 1.5).requires_grad_()
    params = [p for p in layer.parameters()]
    g = torch.randn_like(layer(x))
    want = torch.autograd.grad(layer(x), [x, *params], g)
    got = torch.autograd.grad(lowered(x), [x, *params], g)
    assert lowered.knots is layer.knots  # shared, not copied
    assert torch.allclose(lowered(x), layer(x), rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    ep = torch.export.export(lowered, (x.detach(),))
    assert any("surgeon.bspline_basis" in str(n.target) for n in ep.graph.nodes)


def test_bspline_orders_beyond_the_kernel_are_skipped_with_a_reason():
    row = row_named("bspline_basis")
    high, ok = GroupBSpline(8, groups=2, order=6), BSplineKANLinear(8, 4, order=3)
    assert not row.check(high) and "orders up to 5" in row.reason(high)
    assert row.check(ok) and row.reason(ok) is None
    assert isinstance(row.build(ok), LoweredBSplineKANLinear)
    assert row.reason(row.build(ok)) == "already lowered"
    assert "float64 knots" in row.reason(GroupBSpline(8, groups=2).double())


def test_per_group_numerators_are_left_with_the_right_reason():
    from surgeon.passes.lower.table import rational_reason

    assert rational_reason(GroupRational(16, groups=4)) is None
    reason = rational_reason(GroupRational(16, groups=4, per_group_numerator=True))
    assert reason is not None and "one per group" in reason


def test_lowered_static_fake_quant_is_bit_identical_to_the_layers():
    # The op rounds x·(1/Δ) like the layers (not x/Δ, which flips values within an ulp of a rounding
    # boundary); int4 per-group weights over many rows are where a flip would show.
    model = surgeon.apply(surgeon.load_model("tiny-llama"), [FakeQuant(weight="int4-sym-g16", input="int8-sym-token")])
    reference = copy.deepcopy(model)
    surgeon.apply(model, [Lower()])
    batch = surgeon.example_inputs(model, batch=3, seq=9, seed=5)
    assert torch.equal(run_model(model, batch).logits, run_model(reference, batch).logits)


def test_fake_quant_op_rounds_like_the_layers_where_division_would_not():
    from surgeon.passes.quant import formats
    from surgeon.kernels.fake_quant.reference import fake_quant_reference

    gen = torch.Generator().manual_seed(0)
    step = torch.rand(4096, 1, generator=gen) * 0.3 + 0.01
    x = (torch.randint(-8, 8, (4096, 256), generator=gen) + 0.5) * step  # on half-grid points, ± rounding
    x = x * (1 + (torch.rand(x.shape, generator=gen) - 0.5) * 1e-6)
    divided = torch.round(x / step) != torch.round(x * (1.0 / step))
    assert divided.any()  # inputs where x/Δ and x·(1/Δ) round differently exist, so this test can fail
    layer = formats.fake_uniform(x, step, torch.zeros_like(step), -8, 7)
    op = fake_quant_reference(x, step, torch.zeros_like(step), 256, -8, 7)
    assert torch.equal(op, layer)


def test_flatquant_layers_lower_to_kron_quant_bit_identically():
    from surgeon.passes import CalibrateQuant, Flat
    from surgeon.passes.lower.layers import LoweredKronLinear

    base = surgeon.load_model("tiny-llama")
    batches = [surgeon.example_inputs(base, batch=2, seq=6, seed=s) for s in range(2)]
    model = surgeon.apply(base, [Flat(), FakeQuant(weight="int4-sym-channel-lwc", input="int4-asym-token-lwc"),
                                 CalibrateQuant(epochs=1)], calibration=batches)
    clips = {(float(torch.sigmoid(q.lower.detach())), float(torch.sigmoid(q.upper.detach())))
             for p, q in model.named_modules() if p.endswith("input_quant")}
    assert any(lo != hi for lo, hi in clips)  # LAC trained its two ends apart: the op needs both ratios
    reference = copy.deepcopy(model)
    surgeon.apply(model, [Lower()])
    lowered = [m for m in model.modules() if isinstance(m, LoweredKronLinear)]
    assert len(lowered) == 14
    skipped = dict(surgeon.report(model)[-1].skipped)
    assert "computed by the surgeon::kron_quant" in skipped["model.layers.0.self_attn.q_proj.linear.input_quant"]
    batch = surgeon.example_inputs(model, batch=3, seq=7, seed=11)
    assert torch.equal(run_model(model, batch).logits, run_model(reference, batch).logits)


def test_learnable_flat_layers_are_not_lowered_before_calibration():
    from surgeon.passes import Flat
    from surgeon.passes.lower.table import kron_reason

    model = surgeon.apply(surgeon.load_model("tiny-llama"), [Flat(), FakeQuant(input="int8-sym-token")])
    reason = kron_reason(model.get_submodule("model.layers.0.mlp.down_proj"))
    assert reason is not None and "calibrate_quant" in reason
