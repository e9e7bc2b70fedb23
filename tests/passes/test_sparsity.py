"""Activation sparsity: the layers against their formulas, the passes' calibration, budgets and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import surgeon
from surgeon.errors import RecipeError
from surgeon.passes import RSparse, Teal, ThresholdSparseLinear, TopK, TopKSparseLinear, Wina, rsparse_budget
from surgeon.runner import output_tensors, run_model


def _linear(in_f=12, out_f=7, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f).double()


def test_threshold_layer_matches_masked_matmul_plus_lowrank():
    lin = _linear()
    torch.manual_seed(1)
    x = torch.randn(5, 3, 12, dtype=torch.float64)
    c = torch.rand(12, dtype=torch.float64) + 0.5
    u, v = torch.randn(7, 2, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    layer = ThresholdSparseLinear(lin, 12, 7, rank=2)
    with torch.no_grad():
        layer.threshold.fill_(0.6)
        layer.scale.copy_(c)
        layer.lowrank_u.copy_(u)
        layer.lowrank_v.copy_(v)
    expected = torch.empty(5, 3, 7, dtype=torch.float64)
    for i in range(5):
        for j in range(3):
            xs = x[i, j]
            keep = torch.tensor([float(abs(xs[k]) * c[k] > 0.6) for k in range(12)], dtype=torch.float64)
            dense = lin.weight @ (xs * keep) + lin.bias
            expected[i, j] = dense + u @ (v @ (xs * (1 - keep)))
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_full_rank_branch_makes_rsparse_layer_dense():
    lin = _linear()
    x = torch.randn(9, 12, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    layer = ThresholdSparseLinear(lin, 12, 7, rank=7)
    with torch.no_grad():
        layer.threshold.fill_(0.8)
        layer.lowrank_u.copy_(u * s)
        layer.lowrank_v.copy_(vh)
    assert torch.allclose(layer(x), lin(x), atol=1e-12)


def test_topk_layer_keeps_the_k_largest_magnitudes_per_token():
    lin = _linear()
    x = torch.randn(4, 6, 12, dtype=torch.float64)
    layer = TopKSparseLinear(lin, keep=5)
    kept = torch.zeros_like(x)
    for index in torch.cartesian_prod(torch.arange(4), torch.arange(6)):
        row = x[index[0], index[1]]
        order = sorted(range(12), key=lambda k: -abs(float(row[k])))
        for k in order[:5]:
            kept[index[0], index[1], k] = row[k]
    assert torch.allclose(layer(x), lin(kept), atol=1e-12)


def test_rsparse_budget_follows_the_papers_formula():
    # in 64, out 32, s 0.5, alpha 0.8: kept = int(64*0.5*0.8) = 25 channels;
    # rank = int((64*32*0.5 - 25*32) / 96) = int(224 / 96) = 2; mask sparsity = 1 - 25/64.
    assert rsparse_budget(64, 32, 0.5, 0.8) == (1 - 25 / 64, 2)
    assert rsparse_budget(64, 32, 0.5, 1.0) == (0.5, 0)


def _linear_inputs(model, path, batch):
    got = []
    h = model.get_submodule(path).register_forward_pre_hook(lambda m, a: got.append(a[0].detach()))
    run_model(model, batch)
    h.remove()
    return got[0].reshape(-1, got[0].shape[-1]).double()


def test_teal_threshold_is_the_calibration_quantile_and_hits_the_target():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    batch = surgeon.example_inputs(model, batch=4, seq=16, seed=5)
    x = _linear_inputs(model, "model.layers.1.mlp.down_proj", batch)
    surgeon.apply(model, [Teal(sparsity=0.4)], calibration=[batch])
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, ThresholdSparseLinear)
    expected = torch.quantile(x.abs().flatten(), 0.4, interpolation="lower")
    assert float(layer.threshold) == pytest.approx(float(expected), rel=1e-6)
    zeroed = float((layer.mask(x.float()) == 0).double().mean())
    assert zeroed == pytest.approx(0.4, abs=2 / x.numel())
    [step] = surgeon.report(model)
    assert all(r["achieved_sparsity"] == pytest.approx(0.4, abs=1e-3) for r in step.records)
    assert ("lm_head", "outside the model's MLP blocks (head, pooler or embedding projection)") in step.skipped


def test_teal_at_zero_sparsity_changes_nothing():
    model = surgeon.load_model("tiny-qwen2", num_layers=1)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [Teal(sparsity=0.0)])
    batch = surgeon.example_inputs(model, batch=2, seq=7, seed=1)
    a, b = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wina_uses_column_norms_where_the_code_does_or_everywhere():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    norms = {p: m.weight.detach().norm(dim=0) for p, m in model.named_modules() if isinstance(m, nn.Linear)}
    code = surgeon.apply(copy.deepcopy(model), [Wina(sparsity=0.5)])
    every = surgeon.apply(copy.deepcopy(model), [Wina(sparsity=0.5, column_norms="all")])
    for name in ("gate_proj", "up_proj", "down_proj"):
        path = f"model.layers.0.mlp.{name}"
        want = norms[path] if name == "gate_proj" else torch.ones_like(norms[path])
        assert torch.allclose(code.get_submodule(path).scale, want)
        assert torch.allclose(every.get_submodule(path).scale, norms[path])
    for name, weighted in (("k_proj", True), ("q_proj", False), ("o_proj", False)):
        path = f"model.layers.0.self_attn.{name}"
        want = norms[path] if weighted else torch.ones_like(norms[path])
        assert torch.allclose(code.get_submodule(path).scale, want)


def test_rsparse_lowrank_branch_is_the_weights_truncated_svd():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    w = model.model.layers[0].mlp.up_proj.weight.detach().double()
    surgeon.apply(model, [RSparse(sparsity=0.5, alpha=0.5, target="model.layers.0.mlp.up_proj")])
    layer = model.model.layers[0].mlp.up_proj
    share, rank = rsparse_budget(64, 128, 0.5, 0.5)
    assert layer.rank == rank > 0
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    approx = (layer.lowrank_u @ layer.lowrank_v).double()
    assert torch.allclose(approx, (u[:, :rank] * s[:rank]) @ vh[:rank], atol=1e-5)
    [step] = surgeon.report(model)
    assert step.records[0]["achieved_sparsity"] == pytest.approx(share, abs=1e-3)


def test_topk_pass_wraps_each_mlp_down_projection():
    model = surgeon.load_model("tiny-gpt2", num_layers=2)
    surgeon.apply(model, [TopK(sparsity=0.75, expect=2)])
    for block in model.transformer.h:
        assert isinstance(block.mlp.c_proj, TopKSparseLinear) and block.mlp.c_proj.keep == 32  # d_ff 128
    [step] = surgeon.report(model)
    assert step.matched == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    assert 0 < step.records[0]["dropped_mass"] < 1


@pytest.mark.parametrize("make, field", [
    (lambda: Teal(sparsity=1.0), "sparsity"),
    (lambda: TopK(sparsity=-0.1), "sparsity"),
    (lambda: RSparse(alpha=0.0), "alpha"),
    (lambda: Teal(max_tokens=0), "max_tokens"),
    (lambda: Wina(column_norms="some"), "column_norms"),
])
def test_bad_options_name_the_field(make, field):
    with pytest.raises(RecipeError, match=f"`{field}`"):
        make()
