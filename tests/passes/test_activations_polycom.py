"""PolyReLU, PolyNorm and CRReLU: formulas, gradients, swaps and save/load of trained coefficients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import surgeon
from surgeon.passes import CRReLU, PolyNorm, PolyReLU, SwapActivation, make_activation
from surgeon.runner import output_tensors, run_model


def _x():
    torch.manual_seed(0)
    return torch.randn(3, 4, 10, dtype=torch.float64)


def test_polyrelu_formula_and_paper_init():
    act = PolyReLU().double()
    assert act.coefficients.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    with torch.no_grad():
        act.coefficients.copy_(torch.tensor([0.1, -0.4, 0.7, 0.2], dtype=torch.float64))
    x = _x()
    r = x.clamp_min(0)
    assert torch.allclose(act(x), 0.1 - 0.4 * r + 0.7 * r**2 + 0.2 * r**3, atol=1e-13)


def test_polynorm_normalises_each_power_over_the_hidden_axis():
    act = PolyNorm().double()
    with torch.no_grad():
        act.coefficients.copy_(torch.tensor([0.3, 0.5, -0.2, 0.9], dtype=torch.float64))
    x = _x()
    out = torch.empty_like(x)
    for idx in range(3 * 4):
        row = x.reshape(-1, 10)[idx]
        terms = [p / torch.sqrt((p**2).sum() / 10 + 1e-6) for p in (row, row**2, row**3)]
        out.reshape(-1, 10)[idx] = 0.3 + 0.5 * terms[0] - 0.2 * terms[1] + 0.9 * terms[2]
    assert torch.allclose(act(x), out, atol=1e-12)


def test_crrelu_formula_and_init():
    act = CRReLU().double()
    assert float(act.epsilon.detach()) == pytest.approx(0.01)
    x = _x()
    assert torch.allclose(act(x), torch.where(x > 0, x, 0.0) + 0.01 * x * torch.exp(-x * x / 2), atol=1e-13)


@pytest.mark.parametrize("cls", [PolyReLU, PolyNorm, CRReLU])
def test_gradcheck_in_float64(cls):
    act = cls().double()
    x = (_x()[0] + 0.05).requires_grad_()  # keep away from ReLU's kink at 0
    params = dict(act.named_parameters())
    fn = lambda x, *p: torch.func.functional_call(act, dict(zip(params, p)), (x,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params.values()))


def test_reduced_forms_equal_relu():
    x = _x()
    poly = PolyReLU().double()
    with torch.no_grad():
        poly.coefficients.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    cr = CRReLU(epsilon=0.0).double()
    assert torch.equal(poly(x), torch.relu(x)) and torch.equal(cr(x), torch.relu(x))


def test_swap_to_the_same_function_is_exact():
    model = surgeon.load_model("tiny-llama", num_layers=2)  # SiLU MLPs
    reference = copy.deepcopy(model)
    surgeon.apply(model, [SwapActivation(to="silu")])
    batch = surgeon.example_inputs(model)
    a, b = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name, cls", [("polyrelu", PolyReLU), ("polynorm", PolyNorm), ("crrelu", CRReLU)])
def test_swap_installs_and_trained_coefficients_survive_save_load(name, cls, tmp_path):
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [SwapActivation(to=name)])
    act = model.model.layers[0].mlp.act_fn
    assert isinstance(act, cls) and isinstance(make_activation(name), cls)
    with torch.no_grad():
        for p in act.parameters():
            p.add_(0.125)  # as if trained
    surgeon.save(model, tmp_path / "out")
    loaded = surgeon.load(tmp_path / "out")
    for p, q in zip(act.parameters(), loaded.model.layers[0].mlp.act_fn.parameters()):
        assert torch.equal(p, q)
    batch = surgeon.example_inputs(model, batch=2, seq=5, seed=3)
    a, b = output_tensors(run_model(model, batch)), output_tensors(run_model(loaded, batch))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(loaded.model.layers[0].mlp.act_fn, nn.Module)
