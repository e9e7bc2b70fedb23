"""``fold_norm`` is exact on every zoo model with a foldable norm, alone and composed; it says why not."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgeon
from surgeon.errors import MatchError
from surgeon.passes import FoldNorm, SwapActivation
from surgeon.passes.norm import WeightlessNorm
from surgeon.runner import output_tensors, run_model
from surgeon.zoo import zoo_names

UNFOLDABLE = {"tiny-bert"}  # post-norm: every norm output is also the residual stream


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def _outputs(model, batch):
    return output_tensors(run_model(model, batch))


@pytest.mark.parametrize("name", [n for n in zoo_names() if n not in UNFOLDABLE])
def test_fold_norm_is_exact_on_zoo_models(name):
    model = surgeon.load_model(name, num_layers=2)
    reference = copy.deepcopy(model)
    surgeon.apply(model, [FoldNorm()])
    [step] = surgeon.report(model)
    assert step.matched and step.preserves == "exact"
    assert any(isinstance(m, WeightlessNorm) for m in model.modules())
    for batch in (surgeon.example_inputs(model), surgeon.example_inputs(model, batch=3, seq=5, seed=3)):
        before, after = _outputs(reference, batch), _outputs(model, batch)
        for key in before:
            assert _rel(before[key], after[key]) <= 1e-5, (name, key)


def test_fold_norm_composed_with_swap_activation_equals_the_swap_alone():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    swapped_only = surgeon.apply(copy.deepcopy(model), [SwapActivation(to="gelu")])
    surgeon.apply(model, [FoldNorm(), SwapActivation(to="gelu")])
    assert [r.name for r in surgeon.report(model)] == ["fold_norm", "swap_activation"]
    batch = surgeon.example_inputs(model, batch=3, seq=6, seed=2)
    a, b = _outputs(swapped_only, batch), _outputs(model, batch)
    assert all(_rel(a[k], b[k]) <= 1e-5 for k in a)


def test_tied_output_head_is_untied_and_the_embedding_keeps_its_values():
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    assert model.lm_head.weight is model.transformer.wte.weight
    embedding = model.transformer.wte.weight.detach().clone()
    surgeon.apply(model, [FoldNorm(target="transformer.ln_f")])
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight, embedding)
    assert not torch.equal(model.lm_head.weight, embedding)
    assert model.config.tie_word_embeddings is False


def test_post_norm_model_reports_why_nothing_folds():
    model = surgeon.load_model("tiny-bert", num_layers=1)
    with pytest.raises(MatchError) as err:
        surgeon.apply(model, [FoldNorm()])
    message = str(err.value)
    assert "step 0, pass `fold_norm`" in message and "matched no norm" in message
    assert "residual stream" in message and "LayerNorm" in message


def test_residual_reader_is_skipped_with_reason():
    model = surgeon.load_model("tiny-olmo2", num_layers=1)  # norms after attention/MLP feed the residual add
    surgeon.apply(model, [FoldNorm()])
    [step] = surgeon.report(model)
    reasons = dict(step.skipped)
    assert "feeds `call_function add`" in reasons["model.layers.0.post_attention_layernorm"]


# ----------------------------------------------------------------------------------- property test


class RMS(nn.Module):
    """An RMS norm written without any HF class, to show recognition is structural."""

    def __init__(self, d, one_plus):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d) * 0.3 + (0.0 if one_plus else 1.0))
        self.eps, self.one_plus = 1e-6, one_plus

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * (1 + self.weight if self.one_plus else self.weight)


class Mlp(nn.Module):
    def __init__(self, d, h, gated, bias):
        super().__init__()
        self.gated = gated
        self.up = nn.Linear(d, h, bias=bias)
        self.gate = nn.Linear(d, h, bias=bias) if gated else None
        self.down = nn.Linear(h, d, bias=bias)
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.act(self.gate(x)) * self.up(x) if self.gated else self.act(self.up(x))
        return self.down(h)


class Net(nn.Module):
    def __init__(self, d, h, kind, gated, bias):
        super().__init__()
        make = {"layer": lambda: nn.LayerNorm(d), "rms": lambda: RMS(d, False), "gemma": lambda: RMS(d, True)}
        self.norm1, self.norm2 = make[kind](), make[kind]()
        self.mlp = Mlp(d, h, gated, bias)
        self.head = nn.Linear(d, 5, bias=bias)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.weight.add_(torch.randn(d) * 0.2)
                if getattr(norm, "bias", None) is not None:
                    norm.bias.normal_(0, 0.3)

    def forward(self, x):
        x = x + self.mlp(self.norm1(x))
        return self.head(self.norm2(x))


@settings(max_examples=20, deadline=None)
@given(d=st.integers(2, 40), h=st.integers(1, 48), rows=st.integers(1, 6),
       kind=st.sampled_from(["layer", "rms", "gemma"]), gated=st.booleans(), bias=st.booleans())
def test_fold_norm_property_random_shapes(d, h, rows, kind, gated, bias):
    torch.manual_seed(d * 1000 + h)
    net = Net(d, h, kind, gated, bias).eval()
    x = torch.randn(rows, 3, d) * 2
    reference = copy.deepcopy(net)
    surgeon.apply(net, [FoldNorm(expect=2)], inputs=x)
    assert isinstance(net.norm1, WeightlessNorm) and isinstance(net.norm2, WeightlessNorm)
    x2 = torch.randn(rows + 1, 2, d)
    with torch.no_grad():
        assert _rel(reference(x2), net(x2)) <= 1e-5


def test_norm_without_bias_adds_no_bias_to_its_readers():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [FoldNorm()])
    assert model.model.layers[0].self_attn.q_proj.bias is None
    [step] = surgeon.report(model)
    assert step.params_before - step.params_after == 3 * 64  # only the three norm gains disappear
