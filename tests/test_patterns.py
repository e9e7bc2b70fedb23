"""The pattern language and the built-in patterns, as executable specs on small hand-written modules."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.capture import capture
from surgeon.patterns import (
    GATED_MLP,
    NORM_TO_LINEAR,
    MatchContext,
    Pattern,
    anything,
    find,
    function,
    is_activation,
    is_linear,
    linear,
    linear_view,
    mlp_sites,
    module,
    norm_info,
    norm_sites,
    plain_mlp,
    softmax_sites,
)


class Gated(nn.Module):
    def __init__(self, d=8, h=16, flip=False):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)
        self.act = nn.SiLU()
        self.flip = flip

    def forward(self, x):
        a, b = self.act(self.gate(x)), self.up(x)
        return self.down(b * a if self.flip else a * b)


class TransposedLinear(nn.Module):
    """GPT-2's Conv1D layout: weight stored as (in, out)."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out))
        self.bias = nn.Parameter(torch.randn(d_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)


class Plain(nn.Module):
    def __init__(self, leak=False, functional=False):
        super().__init__()
        self.fc1, self.fc2 = TransposedLinear(8, 16), nn.Linear(16, 8, bias=False)
        self.act = nn.GELU()
        self.leak, self.functional = leak, functional

    def forward(self, x):
        h = F.gelu(self.fc1(x)) if self.functional else self.act(self.fc1(x))
        y = self.fc2(h)
        return y + h.sum(-1, keepdim=True) if self.leak else y


def _graph(model, x):
    cap = capture(model, x)
    scope = cap.scopes[""]
    return scope.graph, MatchContext(model, "", cap)


@pytest.mark.parametrize("flip", [False, True])
def test_gated_pattern_matches_either_operand_order(flip):
    graph, ctx = _graph(Gated(flip=flip), torch.randn(2, 3, 8))
    [m] = find(GATED_MLP, graph, ctx)
    assert (m.target("gate"), m.target("up"), m.target("down")) == ("gate", "up", "down")
    assert m.nodes["x"].op == "placeholder"  # fan-out: one producer feeds gate and up


def test_plain_pattern_accepts_transposed_linears_and_functional_activations():
    for functional in (False, True):
        graph, ctx = _graph(Plain(functional=functional), torch.randn(2, 8))
        [m] = find(plain_mlp(with_dropout=False), graph, ctx)
        assert m.target("fc1") == "fc1" and m.target("fc2") == "fc2"
        assert m.nodes["act"].op == ("call_function" if functional else "call_module")


def test_closed_captures_reject_a_hidden_activation_used_elsewhere():
    graph, ctx = _graph(Plain(leak=True), torch.randn(2, 8))
    assert find(plain_mlp(with_dropout=False), graph, ctx) == []


def test_path_glob_shape_and_dtype_predicates():
    graph, ctx = _graph(Gated(d=8, h=16), torch.randn(2, 3, 8))
    wide = Pattern("wide", {"l": linear(shape=lambda s: s[-1] == 16)}, ())
    assert sorted(m.target("l") for m in find(wide, graph, ctx)) == ["gate", "up"]
    by_path = Pattern("p", {"l": module(nn.Linear, path="d*")}, ())
    assert [m.target("l") for m in find(by_path, graph, ctx)] == ["down"]
    f64 = Pattern("f", {"l": linear(dtype=lambda d: d == torch.float64)}, ())
    assert find(f64, graph, ctx) == []


def test_edges_must_name_pattern_nodes():
    with pytest.raises(ValueError, match="not a pattern node"):
        Pattern("bad", {"a": anything()}, (("a", "b"),))


def test_mul_spec_matches_operator_mul():
    graph, ctx = _graph(Gated(), torch.randn(2, 8))
    pat = Pattern("mul", {"m": function(operator.mul)}, ())
    assert len(find(pat, graph, ctx)) == 1


def test_structure_recognition():
    assert is_linear(nn.Linear(3, 4)) and is_linear(TransposedLinear(3, 4))
    view = linear_view(TransposedLinear(3, 4))
    assert view.transposed and view.weight().shape == (4, 3)
    assert not is_linear(nn.LayerNorm(4))
    assert is_activation(nn.SiLU()) and not is_activation(nn.Identity()) and not is_activation(nn.Linear(2, 2))
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    info = norm_info(ln)
    assert info.kind == "layer" and torch.allclose(info.gain.float(), ln.weight, atol=1e-6)
    assert torch.allclose(info.bias.float(), ln.bias, atol=1e-6)

    class Scale(nn.Module):  # a 1-D weight, but not a norm
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(6) + 0.5)
            self.eps = 1e-6

        def forward(self, x):
            return x * self.weight

    assert norm_info(Scale()) is None


def test_gemma_one_plus_w_norm_is_recognised_with_its_effective_gain():
    model = surgeon.load_model("tiny-gemma")
    norm = model.model.layers[0].input_layernorm
    info = norm_info(norm)
    assert info.kind == "rms"
    assert torch.allclose(info.gain.float(), 1 + norm.weight.detach(), atol=1e-5)


@pytest.mark.parametrize("name,kind,count,example", [
    ("tiny-llama", "gated", 2, "model.layers.0.mlp"),
    ("tiny-gpt2", "plain", 2, "transformer.h.0.mlp"),
    ("tiny-opt", "plain", 2, "model.decoder.layers.0"),
    ("tiny-bert", "split", 2, "encoder.layer.0"),
    ("tiny-vit", "plain", 2, "layers.0.mlp"),
])
def test_mlp_family_sites_in_zoo_models(name, kind, count, example):
    model = surgeon.load_model(name, num_layers=2)
    sites = mlp_sites(capture(model))
    assert len(sites) == count and {s.kind for s in sites} == {kind}
    site = next(s for s in sites if s.path == example)
    assert model.get_submodule(site.up) is not None and model.get_submodule(site.down) is not None
    assert site.act is not None and is_activation(model.get_submodule(site.act))


def test_bert_split_mlp_names_intermediate_and_output():
    model = surgeon.load_model("tiny-bert", num_layers=1)
    [site] = mlp_sites(capture(model))
    assert site.up == "encoder.layer.0.intermediate.dense"
    assert site.down == "encoder.layer.0.output.dense"
    assert site.act == "encoder.layer.0.intermediate.intermediate_act_fn"


def test_norm_to_linear_fan_out_reaches_into_attention():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    sites, skipped = norm_sites(capture(model))
    by_path = {s.path: s for s in sites}
    attn = by_path["model.layers.0.input_layernorm"].readers
    assert attn == tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
    assert by_path["model.norm"].readers == ("lm_head",)
    assert skipped == []


def test_softmax_sites_are_graph_nodes_where_attention_is_captured():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    sites = softmax_sites(capture(model))
    assert [s.path for s in sites] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert all(s.node is not None for s in sites)


def test_softmax_sites_are_found_by_running_uncaptured_attention():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    sites = softmax_sites(capture(model))
    assert [(s.path, s.node) for s in sites] == [("transformer.h.0.attn", None)]


def test_norm_to_linear_pattern_matches_each_edge():
    class Fan(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(8)
            self.q, self.k, self.other = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.ln(x)
            return self.q(h) + self.k(h) + self.other(x)

    graph, ctx = _graph(Fan(), torch.randn(2, 8))
    found = sorted((m.target("norm"), m.target("linear")) for m in find(NORM_TO_LINEAR, graph, ctx))
    assert found == [("ln", "k"), ("ln", "q")]
