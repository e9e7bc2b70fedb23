"""Dopamine gates: formula, hard limit, gradients, exactness at init, freezing, hardening and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import surgeon
from surgeon.errors import MatchError, RecipeError
from surgeon.passes import Dopamine, DopamineHarden, NeuronGate, gate_parameters
from surgeon.runner import output_tensors, run_model


def _gate(width=6, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    gate = NeuronGate(width, dtype=dtype)
    with torch.no_grad():
        gate.tau.copy_(torch.randn(width))
        gate.gain.copy_(torch.rand(width) + 0.5)
        gate.temperature.copy_(torch.rand(width) + 0.1)
    return gate


def test_smooth_gate_is_gain_times_h_times_logistic():
    gate = _gate()
    h = torch.randn(3, 5, 6, dtype=torch.float64)
    t, g, temp = gate.tau.detach(), gate.gain.detach(), gate.temperature
    expected = g * h / (1 + torch.exp(-(h - t) / temp))
    assert torch.allclose(gate(h), expected, atol=1e-13)


def test_hard_gate_is_the_limit_of_the_smooth_gate():
    gate = _gate()
    h = torch.randn(50, 6, dtype=torch.float64)
    h = h[((h - gate.tau.detach()).abs() > 1e-3).all(-1)]  # the limit is 1/2 exactly at h = tau
    hard = copy.deepcopy(gate)
    hard.hard = True
    expected = gate.gain.detach() * h * (h > gate.tau.detach()).double()
    assert torch.equal(hard(h), expected)
    with torch.no_grad():
        gate.temperature.fill_(1e-6)
    assert torch.allclose(gate(h), hard(h), atol=1e-12)


def test_gate_gradcheck_in_float64():
    gate = _gate()
    h = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, tau, gain: _call(gate, h, tau, gain), (h, gate.tau, gate.gain))


def _call(gate, h, tau, gain):
    return torch.func.functional_call(gate, {"tau": tau, "gain": gain, "temperature": gate.temperature}, (h,))


def test_dopamine_is_exact_at_init_and_trains_only_the_gates():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    reference = copy.deepcopy(model)
    batch = surgeon.example_inputs(model, batch=3, seq=12, seed=4)
    surgeon.apply(model, [Dopamine(expect=2)], calibration=[batch])
    [step] = surgeon.report(model)
    assert step.preserves == "exact" and step.worst_error <= 1e-5
    a, b = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    assert all(torch.equal(a[k], b[k]) for k in a)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in gate_parameters(model)}
    assert sum(p.numel() for p in trainable) == 2 * 2 * 128  # 2 layers × (tau, gain) × d_ff
    model.model.layers[0].mlp.down_proj.gate.tau.grad = None
    model(**batch).logits.square().mean().backward()
    tau_grad = model.model.layers[0].mlp.down_proj.gate.tau.grad
    assert tau_grad is not None and bool((tau_grad != 0).any())  # open gates still pass gradient to tau
    assert model.model.layers[0].mlp.up_proj.weight.grad is None


def test_dopamine_gate_starts_open_margin_temperatures_below_the_smallest_activation():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    batch = surgeon.example_inputs(model, batch=2, seq=10, seed=2)
    seen = []
    hook = model.transformer.h[0].mlp.c_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    run_model(model, batch)
    hook.remove()
    h = seen[0].reshape(-1, seen[0].shape[-1]).double()
    surgeon.apply(model, [Dopamine(temperature=0.2, open_margin=10.0, freeze=False)], calibration=[batch])
    gate = model.transformer.h[0].mlp.c_proj.gate
    temp = 0.2 * h.std(0)
    assert torch.allclose(gate.temperature.double(), temp, rtol=1e-5)
    assert torch.allclose(gate.tau.detach().double(), h.min(0).values - 10.0 * temp, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())


def test_harden_masks_below_tau_and_reports_the_firing_share():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    batch = surgeon.example_inputs(model, batch=2, seq=9, seed=3)
    surgeon.apply(model, [Dopamine()], calibration=[batch])
    down = model.model.layers[0].mlp.down_proj
    seen = []
    hook = down.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    run_model(model, batch)
    hook.remove()
    h = seen[0]
    with torch.no_grad():  # as if training had closed some neurons: tau at each neuron's median
        down.gate.tau.copy_(h.reshape(-1, h.shape[-1]).median(0).values)
    surgeon.apply(model, [DopamineHarden()], calibration=[batch])
    expected_firing = float((h > down.gate.tau.detach()).float().mean())
    [_, step] = surgeon.report(model)
    assert step.records[0]["firing"] == pytest.approx(expected_firing, abs=1e-6)
    assert 0.3 < expected_firing < 0.7
    y = down(h)
    assert torch.allclose(y, down.inner(down.gate.gain * h * (h > down.gate.tau).float()), atol=1e-6)


def test_bad_options_and_missing_gates():
    with pytest.raises(RecipeError, match="`temperature`"):
        Dopamine(temperature=0.0)
    with pytest.raises(RecipeError, match="`open_margin`"):
        Dopamine(open_margin=-1.0)
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(MatchError, match="matched no gated down projection"):
        surgeon.apply(model, [DopamineHarden()])


def test_open_margin_default_rounds_the_gate_to_one_in_fp32():
    z = torch.tensor(18.0)
    assert float(1 - torch.sigmoid(-z)) == 1.0 and math.exp(-18) > 0
