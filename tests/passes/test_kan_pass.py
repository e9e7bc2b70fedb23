"""The ``kan`` pass on zoo models: residual forms exact, pure fits close, distill within 5%, its errors."""

from __future__ import annotations

import copy

import pytest
import torch

import surgeon
from surgeon.errors import RecipeError
from surgeon.passes import KAN
from surgeon.passes.kan import BSplineKANLinear, GroupBSpline, GroupRational, PreActivated
from surgeon.passes.kan.fit import gaussian_gain
from surgeon.runner import output_tensors, run_model

torch.set_num_threads(1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def _model_error(reference, model, seed=5) -> float:
    batch = surgeon.example_inputs(model, batch=3, seq=7, seed=seed)  # not the batch the pass fitted on
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    return max(_rel(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name,config", [
    ("tiny-llama", KAN()), ("tiny-gpt2", KAN(basis="bspline")), ("tiny-bert", KAN(structure="kan")),
    ("tiny-llama", KAN(structure="kan", basis="bspline"))], ids=["kat-rat", "kat-bsp", "kan-rat", "kan-bsp"])
def test_residual_form_is_exact_at_init(name, config):
    model = surgeon.load_model(name, num_layers=2)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [config])
    assert _model_error(reference, model) <= 1e-6
    assert all(r["init_error"]["after"] <= 1e-6 for r in surgeon.report(model)[0].records)


def test_kat_structure_wraps_projections_and_replaces_the_activation():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [KAN(form="pure")])
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.up_proj, PreActivated) and isinstance(mlp.gate_proj, PreActivated)
    assert isinstance(mlp.act_fn, GroupRational) and mlp.act_fn.base is None
    assert mlp.act_fn.denominator.shape == (8, 4) and mlp.act_fn.numerator.shape == (6,)


def test_pure_fit_on_tiny_llama_keeps_logits_within_1e_2():
    for basis in ("rational", "bspline"):
        model = surgeon.load_model("tiny-llama", num_layers=2)
        reference = copy.deepcopy(model)
        calibration = [surgeon.example_inputs(model, batch=4, seq=16, seed=s) for s in (11, 12)]
        surgeon.apply(model, [KAN(basis=basis, form="pure")], calibration=calibration)
        assert _model_error(reference, model) <= 1e-2, basis


def test_bspline_grid_is_adapted_to_the_recorded_pre_activations():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    mlp = model.transformer.h[0].mlp
    seen = []
    hook = mlp.act.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    run_model(model, surgeon.example_inputs(model))
    hook.remove()
    surgeon.apply(model, [KAN(basis="bspline", form="pure", grid_eps=0.0)])
    act = model.transformer.h[0].mlp.act
    assert isinstance(act, GroupBSpline)
    pre = seen[0].reshape(-1, act.groups, act.width // act.groups).transpose(0, 1).reshape(act.groups, -1)
    k = act.order
    assert torch.allclose(act.knots[:, k].double(), pre.min(1).values.double(), atol=1e-4)
    assert torch.allclose(act.knots[:, -k - 1].double(), pre.max(1).values.double(), atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("basis", ["bspline", "rational"])
def test_distill_with_kan_structure_reaches_5_percent_per_scope(name, basis):
    model = surgeon.load_model(name, num_layers=1)
    surgeon.apply(model, [KAN(structure="kan", basis=basis, form="pure", init="distill", steps=15, samples=384)])
    [step] = surgeon.report(model)
    assert all(r["init_error"]["after"] <= 0.05 for r in step.records), step.records
    assert all(c.relative_error <= 0.05 for c in step.certificates), step.text()
    kan_layers = [m for m in model.modules() if isinstance(m, (BSplineKANLinear, GroupRational))]
    assert kan_layers


def test_scratch_draws_variance_preserving_weights():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    surgeon.apply(model, [KAN(form="pure", init="scratch")])
    mlp = model.transformer.h[0].mlp
    d_ff = mlp.act.width
    gain = gaussian_gain(lambda x: mlp.act(x.expand(-1, d_ff))[:, :1])  # every group fitted alike
    down = mlp.c_proj.weight.detach().double()  # Conv1D: (in, out)
    assert down.std().item() == pytest.approx(gain / d_ff ** 0.5, rel=0.05)
    up = mlp.c_fc.linear.weight.detach().double()
    assert up.std().item() == pytest.approx(1 / up.shape[0] ** 0.5, rel=0.05)
    assert torch.all(mlp.c_fc.linear.bias == 0)


@pytest.mark.parametrize("options,field", [
    ({"groups": 0}, "groups"), ({"basis": "chebyshev"}, "basis"), ({"grid_eps": 2.0}, "grid_eps"),
    ({"init": "random"}, "init"), ({"lr": 0.0}, "lr")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(RecipeError, match=f"`{field}`"):
        KAN(**options)


def test_groups_that_do_not_divide_the_width_are_refused():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    with pytest.raises(RecipeError, match="`groups`"):
        surgeon.apply(model, [KAN(groups=3)])


@pytest.mark.parametrize("config", [KAN(), KAN(basis="bspline"), KAN(structure="kan", basis="bspline")],
                         ids=["kat-rat", "kat-bsp", "kan-bsp"])
def test_new_layers_stay_capturable(config):
    model = surgeon.load_model("tiny-bert", num_layers=1)
    surgeon.apply(model, [config])
    assert not surgeon.report(model)[0].notes  # a note would name a scope that fx can no longer trace
