"""``kan_refine`` (grid and reps extension, S-KAN collapse), the hqkan structure and the weighted activation fits."""

from __future__ import annotations

import copy
import math

import torch

import surgeon
from surgeon.passes import KAN, KANRefine
from surgeon.passes.kan import GroupBSpline, QKANLinear, Selectable
from surgeon.passes.kan.refine import refine_grid, refine_reps
from surgeon.runner import output_tensors, run_model

torch.set_num_threads(1)


def _model_error(reference, model, seed=5) -> float:
    batch = surgeon.example_inputs(model, batch=3, seq=7, seed=seed)  # not the batch the pass fitted on
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    return max(float((before[k].double() - after[k].double()).norm() / before[k].double().norm()) for k in before)


def test_hqkan_is_a_log2_bottleneck_with_a_qkan_core_started_from_data():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    surgeon.apply(model, [KAN(structure="hqkan", basis="daruan", form="pure", reps=2)])
    rec = surgeon.report(model)[0].records[0]
    k = math.ceil(math.log2(rec["width"]))
    core = model.get_submodule(rec["act"])
    assert isinstance(core, QKANLinear) and (core.in_features, core.out_features) == (k, k)
    up, down = model.get_submodule(rec["up"]), model.get_submodule(rec["down"])
    assert (up.in_features, up.out_features, down.in_features, down.out_features) == (rec["width"], k, k, rec["width"])
    # data-driven start (PCA in, activation core, least-squares out): far better than the built layers
    assert rec["init_error"]["after"] < 0.5 < rec["init_error"]["before"]


def test_grid_extension_to_a_multiple_is_exact_everywhere_and_close_otherwise():
    torch.manual_seed(0)
    act = GroupBSpline(4, 2, grid=5, order=3).double()
    with torch.no_grad():
        act.coef.copy_(torch.randn(2, 8))
        act.silu.copy_(torch.randn(2))
    x = torch.linspace(-3, 3, 301, dtype=torch.float64)[:, None].expand(-1, 4)  # beyond the knots too
    before = act(x)
    fine = copy.deepcopy(act)
    refine_grid(fine, 10)
    assert fine.coef.shape == (2, 13) and fine.knots.shape == (2, 17)
    assert torch.allclose(fine(x), before, atol=1e-10)
    # the new knot vector contains the old one (knot insertion), evaluated independently
    assert all(any(abs(a - b) < 1e-12 for b in fine.knots[0].tolist()) for a in act.knots[0].tolist())
    odd = copy.deepcopy(act)
    refine_grid(odd, 7)
    inside = x[(x[:, 0] > act.knots[0, 3]) & (x[:, 0] < act.knots[0, -4])]
    err = (odd(inside) - act(inside)).norm() / act(inside).norm()
    assert 1e-9 < err < 0.05


def test_reps_extension_is_exact():
    torch.manual_seed(1)
    layer = QKANLinear(3, 2, reps=2).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape))
    x = torch.randn(5, 3, dtype=torch.float64)
    before = layer(x)
    refine_reps(layer, 4)
    assert layer.theta.shape == (2, 3, 5, 2) and layer.pre_w.shape == (2, 3, 4)
    assert torch.allclose(layer(x), before, atol=1e-12)
    assert torch.all(layer.theta[..., 2:4, :] == 0) and torch.all(layer.pre_w[..., 2:] == 0)


def test_refine_pass_extends_grids_and_reps_and_survives_save_load(tmp_path):
    for n, (kan, refine) in enumerate(((KAN(basis="bspline", structure="kan", form="pure"), KANRefine(grid=10)),
                                       (KAN(basis="daruan", form="pure", reps=1), KANRefine(reps=3)))):
        model = surgeon.load_model("tiny-gpt2", num_layers=1)
        surgeon.apply(model, [kan])
        reference = copy.deepcopy(model)
        surgeon.apply(model, [refine])
        assert _model_error(reference, model) <= 1e-5
        out = tmp_path / f"refined{n}"
        surgeon.save(model, out)
        loaded = surgeon.load(out)
        batch = surgeon.example_inputs(model, batch=2, seq=5, seed=3)
        a, b = output_tensors(run_model(model, batch)), output_tensors(run_model(loaded, batch))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_collapse_keeps_the_strongest_candidate():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    surgeon.apply(model, [KAN(basis="selectable", form="pure", candidates=("bspline", "fourier"))])
    mixtures = [m for m in model.modules() if isinstance(m, Selectable)]
    assert len(mixtures) == 2  # F1 and F2
    with torch.no_grad():
        for act in mixtures:
            act.mix[0].fill_(0.0)  # bspline switched off: collapsing to fourier drops nothing
            act.mix[1].fill_(1.0)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [KANRefine(collapse=True)])
    assert all(act.names == ["fourier"] and len(act.candidates) == 1 for act in mixtures)
    assert _model_error(reference, model) <= 1e-6


def test_weighted_rational_fit_lowers_the_weighted_error():
    from surgeon.passes.kan.fit import rational_fit
    from surgeon.passes.kan.layers import GroupRational
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(1, 3000, generator=g, dtype=torch.float64),
                   torch.randn(1, 300, generator=g, dtype=torch.float64) * 8], 1)
    w = torch.where(x < -3, 50.0, 1.0)  # the far-left tail is what costs after fc2 here
    gelu = torch.nn.GELU()

    def error(num, den, weights):
        act = GroupRational(1, 1).double()
        with torch.no_grad():
            act.numerator.copy_(num)
            act.denominator.copy_(den)
        with torch.no_grad():
            return float((weights * (act(x.T).T - gelu(x)) ** 2).sum())

    weighted, plain = rational_fit(x, gelu, weights=w), rational_fit(x, gelu)
    assert error(*weighted, w) < 0.9 * error(*plain, w)  # measured 41.7 vs 48.5
    assert error(*plain, torch.ones_like(w)) < error(*weighted, torch.ones_like(w))


def test_output_fit_lowers_the_error_after_the_down_projection():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    errors = {}
    for weighting in ("uniform", "output"):
        m = copy.deepcopy(model)
        surgeon.apply(m, [KAN(form="pure", fit_weighting=weighting)])
        errors[weighting] = surgeon.report(m)[0].records[0]["init_error"]["after"]
    assert errors["output"] < errors["uniform"]
