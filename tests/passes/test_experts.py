"""FFN → experts: expert layers against hand-written formulas, partitions, routers, passes and errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.errors import CertificationError, MatchError, RecipeError
from surgeon.passes import ExpertFFN, FeatureModulated, FoldNorm, Moefy, Mofme
from surgeon.passes.experts.cluster import balanced_kmeans, coactivation_partition
from surgeon.passes.experts.moefy import fit_router
from surgeon.patterns import mlp_sites
from surgeon.pipeline.recipe import Recipe
from surgeon.runner import output_tensors, run_model
from surgeon.zoo import zoo_names

torch.set_num_threads(1)
D = torch.float64


def _rel(a, b):
    return float((a.double() - b.double()).norm() / a.double().norm())


def _expert_ffn(gated, d=6, d_ff=12, e=4, k=2, seed=0):
    torch.manual_seed(seed)
    layer = ExpertFFN(d, d_ff, e, k, nn.GELU(), gated=gated, dtype=D)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, dtype=D))
    return layer


def _by_hand(layer: ExpertFFN, x):
    """Per token: score experts, take the k best, sum their neuron groups' outputs (loops on purpose)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for t, xt in enumerate(flat):
        scores = layer.router_weight @ xt + layer.router_bias
        chosen = sorted(range(layer.num_experts), key=lambda e: -float(scores[e]))[: layer.top_k]
        acc = layer.b_out.clone()
        for e in chosen:
            pre = layer.w_in[e] @ xt + layer.b_in[e]
            h = F.gelu(layer.w_gate[e] @ xt + layer.b_gate[e]) * pre if layer.gated else F.gelu(pre)
            acc = acc + layer.w_out[e].T @ h
        out[t] = acc
    return out.reshape(x.shape)


@pytest.mark.parametrize("gated", [False, True])
def test_expert_ffn_matches_per_token_formula(gated):
    layer = _expert_ffn(gated)
    x = torch.randn(3, 5, 6, dtype=D)
    with torch.no_grad():
        assert torch.allclose(layer(x), _by_hand(layer, x), atol=1e-12)


@pytest.mark.parametrize("gated", [False, True])
def test_masked_dispatch_computes_the_same_function(gated):
    layer = _expert_ffn(gated, k=3)
    x = torch.randn(4, 3, 6, dtype=D)
    masked = copy.deepcopy(layer)
    masked.dispatch = "masked"
    with torch.no_grad():
        assert torch.allclose(masked(x), layer(x), atol=1e-12)


def test_expert_ffn_gradcheck_float64():
    layer = _expert_ffn(True, d=4, d_ff=6, e=3, k=2)
    x = torch.randn(2, 4, dtype=D, requires_grad=True)

    def f(x, w_in, w_gate, w_out):
        return torch.func.functional_call(layer, {"w_in": w_in, "w_gate": w_gate, "w_out": w_out}, (x,))

    args = (x,) + tuple(p.detach().clone().requires_grad_() for p in (layer.w_in, layer.w_gate, layer.w_out))
    assert torch.autograd.gradcheck(f, args)


def test_flop_count_is_router_plus_k_experts():
    layer = _expert_ffn(True, d=8, d_ff=32, e=4, k=1)
    m = 8
    assert layer.flops_per_token() == 2 * 8 * 4 + 1 * (3 * 2 * m * 8)
    assert layer.dense_flops_per_token() == 3 * 2 * 32 * 8


def _film(inner, d=5, e=3, k=2):
    torch.manual_seed(1)
    block = FeatureModulated(inner, d, e, k, dtype=D)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, dtype=D) * 0.5)
    return block.eval()


def test_feature_modulation_matches_formula_and_gradcheck():
    inner = nn.Linear(5, 4, dtype=D)
    block = _film(inner)
    x = torch.randn(7, 5, dtype=D)
    expected = []
    for xt in x:
        logits = block.router.weight @ xt + block.router.bias
        top = logits.topk(2).indices.tolist()
        w = torch.softmax(logits[top], 0)
        z = sum(wi * ((block.film_scale[e] @ xt + block.scale_bias[e]) * xt
                      + block.film_shift[e] @ xt + block.shift_bias[e]) for wi, e in zip(w, top))
        expected.append(inner(z))
    assert torch.allclose(block(x), torch.stack(expected), atol=1e-12)
    assert torch.autograd.gradcheck(block, (x[:2].clone().requires_grad_(),))


def test_identity_experts_leave_the_inner_block_unchanged_and_uar_weights_are_top_k():
    inner = nn.Linear(5, 4, dtype=D)
    block = FeatureModulated(inner, 5, 4, 2, uncertainty_samples=4, router_dropout=0.3, dtype=D)
    block.reset_identity(torch.Generator().manual_seed(0))
    x = torch.randn(6, 5, dtype=D)
    assert torch.allclose(block(x), inner(x), atol=1e-12)
    block.train()
    w = block.routing_weights(x)
    assert torch.allclose(w.sum(-1), torch.ones(6, dtype=D)) and int((w > 0).sum(-1).max()) <= 2


def test_balanced_kmeans_recovers_planted_clusters():
    torch.manual_seed(0)
    centres = torch.eye(8)[:4] * 5
    rows = (centres.repeat_interleave(6, 0) + 0.1 * torch.randn(24, 8))[torch.randperm(24)]
    groups = balanced_kmeans(rows, 4, seed=3)
    assert groups.shape == (4, 6) and sorted(groups.flatten().tolist()) == list(range(24))
    for g in groups:  # every group is one planted centre
        assert len({int(rows[i].argmax()) for i in g}) == 1


def test_coactivation_partition_recovers_planted_blocks():
    torch.manual_seed(0)
    tokens, blocks, size = 400, 4, 8
    which = torch.randint(0, blocks, (tokens,))
    acts = torch.rand(tokens, blocks * size) * 0.05
    for b in range(blocks):  # neurons of block b fire together on the tokens of topic b
        acts[which == b, b * size:(b + 1) * size] += torch.rand(int((which == b).sum()), size) + 1
    perm = torch.randperm(blocks * size)
    groups = coactivation_partition(acts[:, perm], blocks, neighbours=6, seed=0)
    assert sorted(groups.flatten().tolist()) == list(range(blocks * size))
    for g in groups:
        assert len({int(perm[i]) // size for i in g}) == 1


def test_linear_router_fit_is_least_squares_without_ridge():
    torch.manual_seed(0)
    x, mass = torch.randn(50, 4, dtype=D), torch.randn(50, 3, dtype=D)
    w, b = fit_router(x, mass, 0.0)
    beta = torch.linalg.lstsq(torch.cat([x, torch.ones(50, 1, dtype=D)], 1), mass).solution
    assert torch.allclose(w, beta[:-1].T) and torch.allclose(b, beta[-1])


def _zoo_with_mlps():
    out = []
    for name in zoo_names():
        if mlp_sites(surgeon.capture(surgeon.load_model(name, num_layers=1))):
            out.append(name)
    return out


@pytest.mark.parametrize("name", [n for n in zoo_names() if n not in {"tiny-mixtral", "tiny-qwen3-moe", "tiny-phi3"}])
def test_moefy_with_all_experts_is_exact_on_zoo_models(name):
    model = surgeon.load_model(name, num_layers=1)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [Moefy(num_experts=4, top_k=4, clustering="coactivation")])
    [rep] = surgeon.report(model)
    assert rep.matched and rep.worst_error <= 1e-5
    assert any(isinstance(m, ExpertFFN) for m in model.modules())
    batch = surgeon.example_inputs(model, batch=3, seq=5, seed=3)
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    assert all(_rel(before[k], after[k]) <= 1e-5 for k in before)
    failures = dict(surgeon.capture(model).failures())
    for path, module in model.named_modules():  # the expert blocks capture into fx
        if isinstance(module, ExpertFFN):
            assert path not in failures


def test_zoo_models_without_a_dense_mlp_are_reported():
    assert set(zoo_names()) - set(_zoo_with_mlps()) == {"tiny-mixtral", "tiny-qwen3-moe", "tiny-phi3"}


def test_swiglu_split_uses_one_index_set_for_gate_up_down_and_groups_are_balanced():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    mlp = copy.deepcopy(model.model.layers[0].mlp)
    surgeon.apply(model, [Moefy(num_experts=4, top_k=2)])
    expert = model.model.layers[0].mlp
    assert isinstance(expert, ExpertFFN) and expert.w_in.shape[:2] == (4, mlp.up_proj.out_features // 4)
    seen = []
    for e in range(4):
        for j, row in enumerate(expert.w_in[e]):
            [i] = [i for i in range(mlp.up_proj.out_features) if torch.equal(mlp.up_proj.weight[i], row)]
            assert torch.equal(expert.w_gate[e, j], mlp.gate_proj.weight[i])
            assert torch.equal(expert.w_out[e, j], mlp.down_proj.weight[:, i])
            seen.append(i)
    assert sorted(seen) == list(range(mlp.up_proj.out_features))


def test_centroid_router_is_the_mean_normalised_row_of_each_group():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    w_fc = model.transformer.h[0].mlp.c_fc.weight.detach().T.clone()  # Conv1D stores (in, out)
    surgeon.apply(model, [Moefy(num_experts=4, top_k=1, router="centroid")])
    expert = model.transformer.h[0].mlp.c_fc
    unit = F.normalize(w_fc, dim=1)
    for e in range(4):
        rows = [int((w_fc == r).all(1).nonzero()) for r in expert.w_in[e]]
        assert torch.allclose(expert.router_weight[e], unit[rows].mean(0), atol=1e-6)
    assert torch.all(expert.router_bias == 0)
    assert isinstance(model.transformer.h[0].mlp.c_proj, nn.Identity)


def test_fewer_experts_approximate_and_more_experts_are_closer():
    errors = []
    for k in (1, 3):
        model = surgeon.load_model("tiny-llama", num_layers=1)
        calibration = [surgeon.example_inputs(model, batch=4, seq=16, seed=s) for s in range(3)]
        surgeon.apply(model, [Moefy(num_experts=4, top_k=k, clustering="coactivation")], calibration=calibration)
        errors.append(surgeon.report(model)[0].worst_error)
    assert errors[1] < errors[0] and errors[0] > 1e-3


def test_exactness_check_raises_when_the_block_is_not_dense(monkeypatch):
    from surgeon.passes.experts import moefy as mod

    monkeypatch.setattr(mod, "fill", lambda *a, **k: None)  # experts left uninitialised
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with torch.no_grad():
        with pytest.raises(CertificationError, match="top_k = num_experts"):
            surgeon.apply(model, [Moefy(num_experts=2, top_k=2)])


def test_moefy_composes_with_fold_norm_and_stays_exact():
    model = surgeon.load_model("tiny-qwen3", num_layers=2)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [FoldNorm(), Moefy(num_experts=8, top_k=8)])
    assert [r.name for r in surgeon.report(model)] == ["fold_norm", "moefy"]
    batch = surgeon.example_inputs(model, batch=2, seq=6, seed=5)
    a, b = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    assert all(_rel(a[k], b[k]) <= 1e-5 for k in a)


@pytest.mark.parametrize("kwargs, field", [
    ({"top_k": 9, "num_experts": 8}, "top_k"), ({"num_experts": 0, "top_k": 0}, "num_experts"),
    ({"clustering": "metis"}, "clustering"), ({"router": "mlp"}, "router"), ({"ridge": -1.0}, "ridge"),
    ({"neighbours": 0}, "neighbours"),
])
def test_moefy_bad_options_name_the_field(kwargs, field):
    with pytest.raises(RecipeError, match=f"`{field}`"):
        Moefy(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"top_k": 5}, "top_k"), ({"uncertainty_samples": -1}, "uncertainty_samples"),
    ({"router_dropout": 1.0}, "router_dropout"),
])
def test_mofme_bad_options_name_the_field(kwargs, field):
    with pytest.raises(RecipeError, match=f"`{field}`"):
        Mofme(**kwargs)


def test_indivisible_width_is_skipped_with_reason():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(MatchError, match="not divisible by num_experts=7"):
        surgeon.apply(model, [Moefy(num_experts=7, top_k=1)])


def test_experts_and_fake_quant_in_one_recipe_save_and_load(tmp_path):
    recipe = Recipe.from_dict({"passes": [
        {"pass": "mofme", "target": "model.layers.0.mlp", "options": {"num_experts": 2, "top_k": 1}},
        {"pass": "moefy", "target": "model.layers.1.mlp", "options": {"num_experts": 4, "top_k": 2}},
        {"pass": "fake_quant"}]})
    model = surgeon.load_model("tiny-llama", num_layers=2)
    surgeon.apply(model, recipe)
    assert [r.name for r in surgeon.report(model)] == ["mofme", "moefy", "fake_quant"]
    surgeon.save(model, tmp_path / "out")
    loaded = surgeon.load(tmp_path / "out")
    assert isinstance(loaded.model.layers[0].mlp, FeatureModulated)
    assert isinstance(loaded.model.layers[1].mlp, ExpertFFN)
    batch = surgeon.example_inputs(model, batch=2, seq=5, seed=1)
    a, b = output_tensors(run_model(model, batch)), output_tensors(run_model(loaded, batch))
    assert all(torch.equal(a[k], b[k]) for k in a)
