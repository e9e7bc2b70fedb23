"""``mohd``: the MohdFFN layer against a per-token formula, shared-unit selection, the fits, the pass, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.errors import CertificationError, MatchError, RecipeError
from surgeon.passes import Mohd, MohdFFN
from surgeon.passes.experts import mohd as mohd_mod
from surgeon.passes.experts.mohd import choose_groups, select_shared
from surgeon.patterns import mlp_sites
from surgeon.pipeline.recipe import Recipe
from surgeon.runner import output_tensors, run_model
from surgeon.zoo import zoo_names

torch.set_num_threads(1)
D = torch.float64
NO_DENSE_MLP = {"tiny-mixtral", "tiny-qwen3-moe", "tiny-phi3"}


def _rel(a, b):
    return float((a.double() - b.double()).norm() / a.double().norm())


def _layer(gated, *, d=6, d_ff=16, g=8, s=2, k=3, fusion=True, dispatch="gather", seed=0):
    torch.manual_seed(seed)
    layer = MohdFFN(d, d_ff, g, s, k, nn.GELU(), gated=gated, fusion=fusion, dispatch=dispatch, dtype=D)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, dtype=D))
    return layer


def _by_hand(layer: MohdFFN, x):
    """Per token and per group (loops on purpose): shared groups, scaled top-k routed groups, means of the rest."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    s = layer.num_shared

    def contribution(grp, xt):
        pre = layer.w_in[grp] @ xt + layer.b_in[grp]
        h = F.gelu(layer.w_gate[grp] @ xt + layer.b_gate[grp]) * pre if layer.gated else F.gelu(pre)
        return layer.w_out[grp].T @ h

    for t, xt in enumerate(flat):
        scores = layer.router_weight @ xt + layer.router_bias
        chosen = sorted(range(layer.num_routed), key=lambda r: -float(scores[r]))[: layer.top_k]
        acc = layer.b_out.clone()
        for grp in range(s):
            acc = acc + contribution(grp, xt)
        for r in range(layer.num_routed):
            if r in chosen:
                acc = acc + layer.scale * contribution(s + r, xt)
            elif layer.fusion_mean is not None:
                acc = acc + layer.fusion_mean[r]
        out[t] = acc
    return out.reshape(x.shape)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dispatch", ["gather", "masked"])
@pytest.mark.parametrize("fusion", [False, True])
def test_mohd_ffn_matches_per_token_formula(gated, dispatch, fusion):
    layer = _layer(gated, dispatch=dispatch, fusion=fusion)
    x = torch.randn(3, 5, 6, dtype=D)
    with torch.no_grad():
        assert torch.allclose(layer(x), _by_hand(layer, x), atol=1e-11)


def test_mohd_ffn_with_no_shared_group_matches_formula():
    layer = _layer(False, s=0, k=2)
    x = torch.randn(7, 6, dtype=D)
    with torch.no_grad():
        assert torch.allclose(layer(x), _by_hand(layer, x), atol=1e-11)


def test_mohd_ffn_gradcheck_float64():
    layer = _layer(True)
    names = ["w_in", "w_gate", "w_out", "b_in", "b_out", "scale", "fusion_mean"]
    x = torch.randn(2, 3, 6, dtype=D, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    inputs = (x, *[getattr(layer, n).detach().clone().requires_grad_(True) for n in names])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_flop_count_is_router_shared_chosen_and_fusion():
    layer = MohdFFN(8, 32, 8, 2, 3, nn.GELU(), fusion=True)
    m, d = 4, 8
    assert layer.flops_per_token() == 2 * d * 6 * 2 + (2 + 3) * (2 * 2 * m * d)
    assert layer.dense_flops_per_token() == 2 * 2 * 32 * 8


def test_select_shared_picks_units_hot_on_most_tokens():
    torch.manual_seed(0)
    h = torch.randn(400, 20) * 0.1
    h[:, [3, 11]] += 5.0  # always among the most active
    h[torch.arange(400) % 2 == 0, 7] += 5.0  # on half the tokens
    assert select_shared(h, 2, 0.1).tolist() == [3, 11]
    assert select_shared(h, 3, 0.15).tolist() == [3, 7, 11]


def test_groups_partition_the_units_with_shared_first():
    torch.manual_seed(1)
    h, first = torch.randn(300, 32).double(), torch.randn(32, 6).double()
    h[:, [0, 9, 17, 30]] *= 20
    groups = choose_groups(h, first, Mohd(num_groups=8, num_shared=1, top_k=2))
    assert groups.shape == (8, 4)
    assert sorted(groups.flatten().tolist()) == list(range(32))
    assert groups[0].tolist() == [0, 9, 17, 30]


def _zoo_with_mlps():
    return [n for n in zoo_names() if n not in NO_DENSE_MLP]


@pytest.mark.parametrize("name", _zoo_with_mlps())
def test_mohd_with_every_group_active_is_exact_on_zoo_models(name):
    model = surgeon.load_model(name, num_layers=1)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [Mohd(num_groups=8, num_shared=2, top_k=6)])
    [rep] = surgeon.report(model)
    assert rep.matched and rep.worst_error <= 1e-5
    blocks = [m for m in model.modules() if isinstance(m, MohdFFN)]
    assert blocks and all(float(b.scale.detach()) == 1.0 for b in blocks)
    batch = surgeon.example_inputs(model, batch=3, seq=5, seed=3)
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    assert all(_rel(before[k], after[k]) <= 1e-5 for k in before)
    failures = dict(surgeon.capture(model).failures())
    for path, module in model.named_modules():  # the converted blocks capture into fx
        if isinstance(module, MohdFFN):
            assert path not in failures


def test_zoo_models_without_dense_mlps_are_not_matched():
    for name in NO_DENSE_MLP:
        with pytest.raises(MatchError):
            surgeon.apply(surgeon.load_model(name, num_layers=1), [Mohd(num_groups=8, num_shared=2, top_k=2)])


def _calibration(model):
    return [surgeon.example_inputs(model, batch=4, seq=8, seed=s) for s in (11, 12)]


def test_fitted_scale_is_least_squares_and_fusion_means_are_conditional():
    model = surgeon.load_model("tiny-bert", num_layers=1)
    dense = copy.deepcopy(model)
    calib = _calibration(model)
    surgeon.apply(model, [Mohd(num_groups=8, num_shared=2, top_k=2)], calibration=calib)
    block = next(m for m in model.modules() if isinstance(m, MohdFFN))
    site = mlp_sites(surgeon.capture(dense))[0]
    x = surgeon.calibration.collect_inputs(dense, [site.up], calib, dtype=torch.float32, drop_padding=True)[site.up]
    ffn = lambda t: dense.get_submodule(site.down)(dense.get_submodule(site.act)(dense.get_submodule(site.up)(t)))
    with torch.no_grad():
        scores = x @ block.router_weight.T + block.router_bias
        chosen = torch.zeros_like(scores, dtype=torch.bool)
        chosen.scatter_(1, scores.topk(2, dim=1).indices, True)
        contrib = block.routed_contributions(x)
        for r in range(block.num_routed):  # fusion_mean[r] = mean of c_r over tokens not choosing r
            rows = contrib[~chosen[:, r], r]
            expect = rows.mean(0) if len(rows) else torch.zeros(block.d_model)
            assert torch.allclose(block.fusion_mean[r], expect, atol=1e-5)
        routed = (contrib * chosen.unsqueeze(-1)).sum(1)
        rest = ffn(x) - block.shared_output(x) - block.b_out - ((~chosen).float() @ block.fusion_mean)
        alpha = torch.linalg.lstsq(routed.reshape(-1, 1).double(), rest.reshape(-1, 1).double()).solution
        assert abs(float(alpha) - float(block.scale.detach())) < 1e-4


def test_converted_block_fine_tunes_towards_the_dense_ffn():
    model = surgeon.load_model("tiny-bert", num_layers=1)
    dense = copy.deepcopy(model)
    calib = _calibration(model)
    surgeon.apply(model, [Mohd(num_groups=8, num_shared=1, top_k=2)], calibration=calib)
    block = next(m for m in model.modules() if isinstance(m, MohdFFN))
    site = mlp_sites(surgeon.capture(dense))[0]
    x = surgeon.calibration.collect_inputs(dense, [site.up], calib, dtype=torch.float32, drop_padding=True)[site.up]
    with torch.no_grad():
        target = dense.get_submodule(site.down)(dense.get_submodule(site.act)(dense.get_submodule(site.up)(x)))
    params = [p for n, p in block.named_parameters() if not n.startswith("router")]
    opt = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(40):
        loss = (block(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert block.router_weight.grad is None  # top-k indices carry no gradient to the router
    assert block.scale.grad is not None and block.fusion_mean.grad is not None
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("scaling, fusion", [("none", "none"), ("ratio", "none"), ("fitted", "mean")])
def test_scaling_options_set_the_documented_scale(scaling, fusion):
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    surgeon.apply(model, [Mohd(num_groups=8, num_shared=2, top_k=3, scaling=scaling, fusion=fusion)])
    block = next(m for m in model.modules() if isinstance(m, MohdFFN))
    assert (block.fusion_mean is not None) == (fusion == "mean")
    if scaling == "none":
        assert float(block.scale.detach()) == 1.0
    elif scaling == "ratio":
        assert float(block.scale.detach()) == pytest.approx(6 / 3)


def test_fitted_compensation_is_closer_than_none_on_calibration():
    errs = {}
    for scaling, fusion in (("none", "none"), ("fitted", "mean")):
        model = surgeon.load_model("tiny-bert", num_layers=1)
        calib = _calibration(model)
        surgeon.apply(model, [Mohd(num_groups=8, num_shared=1, top_k=2, scaling=scaling, fusion=fusion)],
                      calibration=calib)
        errs[scaling] = surgeon.report(model)[0].worst_error
    assert errs["fitted"] < errs["none"]


def test_exactness_check_raises_when_the_block_is_not_dense(monkeypatch):
    monkeypatch.setattr(mohd_mod, "fit_compensation", lambda block, *a: (block.scale.fill_(0.5), "")[1])
    with pytest.raises(CertificationError, match="mohd"):
        surgeon.apply(surgeon.load_model("tiny-llama", num_layers=1), [Mohd(num_groups=8, num_shared=2, top_k=6)])


def test_mohd_saves_loads_and_composes_with_fake_quant(tmp_path):
    model = surgeon.load_model("tiny-llama", num_layers=2)
    surgeon.apply(model, Recipe.from_dict({"passes": [
        {"pass": "mohd", "options": {"num_groups": 8, "num_shared": 2, "top_k": 3}}, {"pass": "fake_quant"}]}))
    assert [r.name for r in surgeon.report(model)] == ["mohd", "fake_quant"]
    surgeon.save(model, tmp_path / "out")
    loaded = surgeon.load(tmp_path / "out")
    assert isinstance(loaded.model.layers[1].mlp, MohdFFN)
    batch = surgeon.example_inputs(model, batch=2, seq=5, seed=1)
    a, b = output_tensors(run_model(model, batch)), output_tensors(run_model(loaded, batch))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, field", [
    ({"num_groups": 1, "num_shared": 0, "top_k": 1}, "num_groups"), ({"num_groups": 8, "num_shared": 8}, "num_shared"),
    ({"num_groups": 8, "num_shared": 2, "top_k": 7}, "top_k"), ({"top_k": 0}, "top_k"),
    ({"hot_fraction": 0.0}, "hot_fraction"), ({"ridge": -1.0}, "ridge"), ({"kmeans_iters": 0}, "kmeans_iters"),
    ({"scaling": "norm"}, "scaling"), ({"fusion": "mlp"}, "fusion"), ({"grouping": "metis"}, "grouping"),
])
def test_mohd_bad_options_name_the_field(kwargs, field):
    with pytest.raises(RecipeError, match=f"`{field}`"):
        Mohd(**kwargs)


def test_indivisible_width_is_skipped_with_reason():
    with pytest.raises(MatchError, match="not divisible by num_groups=7"):
        surgeon.apply(surgeon.load_model("tiny-llama", num_layers=1), [Mohd(num_groups=7, num_shared=1, top_k=2)])
