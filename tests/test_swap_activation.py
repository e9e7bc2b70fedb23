"""``swap_activation``: module and functional activations, options validated, custom activations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.errors import RecipeError
from surgeon.passes import SwapActivation, register_activation
from surgeon.rewrite import CapturedModule


def test_swap_replaces_module_activations_in_every_mlp():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    reference = copy.deepcopy(model)
    for layer in reference.model.layers:
        layer.mlp.act_fn = nn.ReLU()
    surgeon.apply(model, [SwapActivation(to="relu", target="model.layers.*.mlp", expect=2)])
    assert all(isinstance(layer.mlp.act_fn, nn.ReLU) for layer in model.model.layers)
    batch = surgeon.example_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    [step] = surgeon.report(model)
    assert step.preserves == "changes" and step.model_certificate.relative_error > 0


class FunctionalMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 6)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = FunctionalMlp()

    def forward(self, x):
        return x + self.mlp(x)


def test_swap_rewrites_a_functional_activation_in_the_graph():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 6)
    expected = x + net.mlp.fc2(torch.tanh(net.mlp.fc1(x)))
    register_activation("tanh_for_test", nn.Tanh, replace=True)
    surgeon.apply(net, [SwapActivation(to="tanh_for_test")], inputs=x)
    assert isinstance(net.mlp, CapturedModule)
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-6)
        x2 = torch.randn(7, 6)  # another batch size: the installed graph is shape-generic
        assert torch.allclose(net(x2), x2 + net.mlp.graph_module.fc2(torch.tanh(net.mlp.graph_module.fc1(x2))))


def test_unknown_activation_is_refused_with_suggestion():
    with pytest.raises(RecipeError, match="unknown activation `gleu`.*Did you mean `gelu`"):
        SwapActivation(to="gleu")


def test_swap_on_bert_split_mlp():
    model = surgeon.load_model("tiny-bert", num_layers=2)
    surgeon.apply(model, [SwapActivation(to="silu", expect=2)])
    assert isinstance(model.encoder.layer[1].intermediate.intermediate_act_fn, nn.SiLU)
