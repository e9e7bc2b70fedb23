"""Quantizer arithmetic against torch's fake-quant ops and formulas written out here; gradients checked."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from surgeon.errors import RecipeError
from surgeon.passes.quant import formats as F
from surgeon.passes.quant.layers import PackedLinear, QuantLinear
from surgeon.passes.quant.observers import finish
from surgeon.passes.quant.quantizers import Quantizer
from surgeon.passes.quant.repquant import fold_dual_clip
from surgeon.passes.quant.spec import parse

torch.set_num_threads(1)


def _w(out=8, inp=32, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_per_tensor_weight_equals_torch_fake_quantize_per_tensor_affine(bits, sym):
    w = _w()
    q = Quantizer(f"int{bits}-{'sym' if sym else 'asym'}-tensor", "weight", w.shape)
    lo, hi = w.min(), w.max()
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
    scale = float(max(-lo, hi) / qmax) if sym else float((hi - lo) / (2**bits - 1))
    zero = 0 if sym else int(torch.round(-lo / torch.tensor(scale)))
    ref = torch.fake_quantize_per_tensor_affine(w, scale, zero, qmin, qmax)
    assert torch.equal(q(w), ref)


@pytest.mark.parametrize("gran,group", [("channel", 0), ("g8", 8)])
@pytest.mark.parametrize("sym", [True, False])
def test_per_channel_and_group_equal_torch_fake_quantize_per_channel_affine(gran, group, sym):
    w = _w()
    q = Quantizer(f"int4-{'sym' if sym else 'asym'}-{gran}", "weight", w.shape)
    rows = w.reshape(-1, group) if group else w
    lo, hi = rows.amin(1), rows.amax(1)
    if sym:
        scale, zero, qmin, qmax = torch.maximum(-lo, hi) / 7, torch.zeros_like(lo), -8, 7
    else:
        scale = (hi - lo) / 15
        zero, qmin, qmax = torch.round(-lo / scale), 0, 15
    ref = torch.fake_quantize_per_channel_affine(rows, scale, zero.to(torch.int32), 0, qmin, qmax)
    assert torch.equal(q(w), ref.reshape(w.shape))


def test_per_token_activation_equals_per_channel_affine_over_tokens():
    x = torch.randn(2, 5, 16)
    q = Quantizer("int8-asym-token", "input", (16,))
    rows = x.reshape(-1, 16)
    lo, hi = rows.amin(1), rows.amax(1)
    scale = (hi - lo) / 255
    ref = torch.fake_quantize_per_channel_affine(rows, scale, torch.round(-lo / scale).to(torch.int32), 0, 0, 255)
    assert torch.equal(q(x), ref.reshape(x.shape))


@pytest.mark.parametrize("fmt,dtype", [("fp8e4m3", torch.float8_e4m3fn), ("fp8e5m2", torch.float8_e5m2)])
def test_fp8_fake_format_matches_a_cast_with_absmax_scale(fmt, dtype):
    w = _w()
    q = Quantizer(f"{fmt}-channel", "weight", w.shape)
    scale = w.abs().amax(1, keepdim=True) / torch.finfo(dtype).max
    assert torch.equal(q(w), (w / scale).to(dtype).float() * scale) or torch.allclose(
        q(w), (w / scale).to(dtype).float() * scale, rtol=1e-6, atol=0)


def test_post_levels_match_the_power_of_sqrt2_formula():
    w = _w(4, 64)
    bits = 4
    out = Quantizer(f"post{bits}-channel", "weight", w.shape)(w)
    alpha = w.abs().amax(1, keepdim=True)
    emax = 2 ** (bits - 1) - 2
    e = torch.round(-2 * torch.log2(w.abs() / alpha))
    ref = torch.where(e <= emax, torch.sign(w) * alpha * math.sqrt(2) ** (-e.clamp(0, emax)), torch.zeros_like(w))
    assert torch.allclose(out, ref, rtol=1e-6, atol=0)
    levels = {round(float(v), 6) for v in (out.abs() / alpha).unique()}
    assert levels <= {0.0} | {round(math.sqrt(2) ** -k, 6) for k in range(emax + 1)}
    assert torch.allclose(F.pow_sqrt2(torch.arange(12.0)), torch.tensor([math.sqrt(2) ** -k for k in range(12)]))


@pytest.mark.parametrize("sqrt2", [False, True])
def test_log_quantizers_match_their_formulas(sqrt2):
    a = torch.softmax(torch.randn(3, 10, 10) * 3, -1)
    a[0, 0, 0] = 0.0
    delta, bits, k = torch.tensor([0.9]), 4, (2.0 if sqrt2 else 1.0)
    out = F.fake_log(a, delta, bits, sqrt2)
    q = torch.round(-k * torch.log2(a / delta))
    ref = torch.where(q <= 2**bits - 1, delta * 2 ** (-q.clamp(0, 2**bits - 1) / k), torch.zeros_like(a))
    assert torch.allclose(out, ref, rtol=1e-6, atol=0)
    assert out[0, 0, 0] == 0


def test_ste_gradient_is_identity_inside_and_zero_outside_the_range():
    x = torch.tensor([-3.0, -0.4, 0.2, 0.9, 5.0], dtype=torch.float64, requires_grad=True)
    step, zero = torch.tensor(0.25, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    F.fake_uniform(x, step, zero, -4, 3).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]  # 0.9/0.25 = 3.6 rounds to 4 > qmax: clamped


def test_lsq_step_gradient_matches_the_lsq_formula_and_torch():
    x = torch.randn(64, dtype=torch.float64)
    q = Quantizer("int4-sym-tensor-lsq", "input", (64,)).double()
    q.step.data.fill_(0.3)
    q(x).sum().backward()
    v = x / 0.3
    inside = (v.round() >= -8) & (v.round() <= 7)
    per = torch.where(inside, v.round() - v, v.round().clamp(-8, 7))
    expected = per.sum() / math.sqrt(64 * 7)  # LSQ gradient with its scale g = 1/sqrt(N·Qp)
    assert torch.allclose(q.step.grad, expected.reshape(1), rtol=1e-9)
    scale = torch.tensor([0.3], dtype=torch.float32, requires_grad=True)
    xf = x.float()
    torch._fake_quantize_learnable_per_tensor_affine(xf, scale, torch.zeros(1), -8, 7, 1 / math.sqrt(64 * 7)).sum().backward()
    assert torch.allclose(q.step.grad.float(), scale.grad, rtol=1e-4)


def test_quantizer_parameter_gradients_pass_gradcheck_in_float64(monkeypatch):
    # The STE makes the forward piecewise constant, so gradcheck runs on its smooth surrogate (rounding
    # replaced by the identity, which is exactly the backward the STE uses); the LSQ test above checks the
    # rounded forward's step gradient against its formula.
    # grad_scale (LSQ's deliberate step-gradient scaling) is likewise checked by the formula test above.
    monkeypatch.setattr(F, "round_ste", lambda v: v)
    monkeypatch.setattr(F, "grad_scale", lambda v, factor: v)
    w = _w(4, 16).double()
    lwc = Quantizer("int3-asym-g8-lwc", "weight", w.shape).double()
    lwc.upper.data.uniform_(-1, 1)
    lwc.lower.data.uniform_(-1, 1)  # clip ratios well below 1: no element sits on a clamp boundary
    params = (lwc.upper.detach().clone().requires_grad_(), lwc.lower.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda u, l: _with(lwc, upper=u, lower=l)(w), params, eps=1e-6, atol=1e-6)
    x = torch.randn(3, 16, dtype=torch.float64)
    lsq = Quantizer("int4-sym-tensor-lsq", "input", (16,)).double()
    step = torch.tensor([0.15], dtype=torch.float64, requires_grad=True)  # small: some values clip
    assert torch.autograd.gradcheck(lambda s: _with(lsq, step=s)(x), (step,), eps=1e-7, atol=1e-6)
    for spec in ("int4-token-asq", "int4-asym-token-asq"):
        asq = Quantizer(spec, "input", (16,)).double()
        nn.init.normal_(asq.adapter.net[2].weight, std=0.5)
        asq.ref.fill_(2.0)
        weight = asq.adapter.net[2].weight.detach().clone().requires_grad_()
        step = torch.tensor([0.15], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, s: _with(asq, **{"adapter.net.2.weight": a, "step": s})(x),
                                        (weight, step), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("sym", [True, False])
def test_observed_asq_starts_at_per_token_rtn(sym):
    # ASQ's β = (m_t / ref)·exp(tanh(adapter)) with s = ref / span: before training it is per-token RTN,
    # written here with torch's per-channel fake quantizer over the token axis.
    g = torch.Generator().manual_seed(0)  # every token has values of both signs (torch needs 0 ≤ z ≤ 15)
    x = torch.randn(2, 9, 16, generator=g) * torch.linspace(0.2, 3.0, 9)[None, :, None]
    q = Quantizer(f"int4-{'sym' if sym else 'asym'}-token-asq", "input", (16,))
    finish(q, _observer_of(x), "minmax", 99.99)
    rows = x.reshape(-1, 16)
    lo, hi = rows.amin(1), rows.amax(1)
    m = torch.maximum(-lo, hi) if sym else hi - lo
    assert float(q.ref) == pytest.approx(float(m.mean()), rel=1e-6)
    assert float(q.step.detach()) == pytest.approx(float(m.mean()) / (7 if sym else 15), rel=1e-6)
    if sym:
        scale, zero, qmin, qmax = torch.maximum(-lo, hi) / 7, torch.zeros_like(lo), -8, 7
    else:
        scale = (hi - lo) / 15
        zero, qmin, qmax = torch.round(-lo / scale), 0, 15
    ref = torch.fake_quantize_per_channel_affine(rows.T.contiguous(), scale, zero.to(torch.int32), 1, qmin, qmax).T
    with torch.no_grad():
        out = q(x).reshape(-1, 16)
    # s·(m_t/ref) equals m_t/span up to one float rounding, which can move a code sitting on a tie
    close = torch.isclose(out, ref, rtol=0, atol=1e-5)
    assert float(close.float().mean()) > 0.98 and float((out - ref).abs().max()) <= float(scale.max()) * 1.001


def _observer_of(x):
    from surgeon.passes.quant.observers import Observer

    obs = Observer()
    obs.update(x)
    return obs


def _with(q, **params):
    """``q`` with some parameters replaced by the given tensors (functional call for gradcheck)."""
    return lambda x: torch.func.functional_call(q, params, (x,))


def test_lwc_sigmoid_clipping_matches_omniquant_formula():
    w = _w()
    q = Quantizer("int4-asym-g16-lwc", "weight", w.shape)
    q.upper.data.normal_()
    q.lower.data.normal_()
    rows = w.reshape(-1, 16)
    hi = torch.sigmoid(q.upper) * rows.amax(1, keepdim=True)
    lo = torch.sigmoid(q.lower) * rows.amin(1, keepdim=True)
    h = ((hi - lo) / 15).clamp(1e-5, 1e4)
    z = torch.round(-lo / h)
    ref = (torch.clamp(torch.round(rows / h) + z, 0, 15) - z) * h
    assert torch.allclose(q(w), ref.reshape(w.shape), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits,spec", [(4, "int4-asym-g16"), (8, "int8-sym-channel"), (3, "int3-asym-g8-lwc"),
                                       (2, "int2-sym-tensor")])
def test_packed_linear_reproduces_the_fake_quant_linear_bit_for_bit(bits, spec):
    from surgeon.passes.quant.pack import pack_linear

    holder = nn.Sequential(QuantLinear(32, 6, True, weight=spec, input="int8-token"))
    holder[0].weight.data.copy_(_w(6, 32))
    x = torch.randn(4, 32)
    before = holder(x)
    pack_linear(holder, "0")
    assert isinstance(holder[0], PackedLinear)
    assert torch.equal(holder(x), before)
    assert holder[0].codes.numel() == -(-6 * 32 // (8 // bits if 8 % bits == 0 else 1))


def test_dual_clip_reparameterisation_keeps_codes_and_linear_outputs():
    torch.manual_seed(0)
    c = 24
    norm, lin = nn.LayerNorm(c), nn.Linear(c, 5)
    nn.init.normal_(norm.weight, 1.0, 0.5)
    nn.init.normal_(norm.bias, 0.0, 0.5)
    x = torch.randn(50, c) * 2
    quant = Quantizer("int6-asym-channel-lwc", "input", (c,))
    y = norm(x)
    quant.set_range(y.amin(0), y.amax(0))
    quant.upper.data.uniform_(1, 4)
    quant.lower.data.uniform_(1, 4)
    with torch.no_grad():
        before = lin(quant(norm(x)))
        per_tensor = fold_dual_clip(norm, [lin], quant)
        after = lin(per_tensor(norm(x)))
    assert per_tensor.spec.granularity == "tensor"
    assert float((after - before).norm() / before.norm()) < 1e-4


def test_bad_specs_raise_recipe_errors_naming_the_field():
    for text, role, why in [("int9", "weight", "format"), ("int4-token", "weight", "tokens"),
                            ("int4-g128-asq", "input", "asq"), ("log4", "input", "softmax"),
                            ("int4-token-lsq", "input", "static"), ("int4-sym-asym", "weight", "repeats"),
                            ("post4-asym", "weight", "asym")]:
        with pytest.raises(RecipeError) as err:
            parse(text, field="weight", role=role)
        assert "`weight`" in str(err.value) and why in str(err.value), (text, str(err.value))
    assert parse("int4-asym-g128-lwc", field="w", role="weight").text() == "int4-asym-g128-lwc"
