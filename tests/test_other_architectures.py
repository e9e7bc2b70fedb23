"""Architectures outside the zoo: capture reproduces eager and fold_norm stays exact, with no per-model code.

Falcon is here on purpose: it adds the attention output into the MLP output in place, which once
corrupted recorded calls.
"""

from __future__ import annotations

import copy

import pytest
import transformers as tf

import surgeon
from surgeon.capture import capture
from surgeon.errors import MatchError
from surgeon.passes import FoldNorm
from surgeon.runner import output_tensors, run_model
from surgeon.zoo import randomise_parameters

from test_capture import _check_scopes_at_new_shape

SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=256, num_hidden_layers=2,
             max_position_embeddings=128)
ARCHS = {
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, {}),
    "falcon": (tf.FalconConfig, tf.FalconForCausalLM, {}),
    "phi": (tf.PhiConfig, tf.PhiForCausalLM, {}),
    "starcoder2": (tf.Starcoder2Config, tf.Starcoder2ForCausalLM, {}),
    "granite": (tf.GraniteConfig, tf.GraniteForCausalLM, {}),
    "cohere": (tf.CohereConfig, tf.CohereForCausalLM, {}),
    "gptj": (tf.GPTJConfig, tf.GPTJForCausalLM, dict(n_embd=64, n_head=4, n_layer=2, rotary_dim=8)),
    "bloom": (tf.BloomConfig, tf.BloomForCausalLM, dict(n_head=4, n_layer=2)),
    "gpt_bigcode": (tf.GPTBigCodeConfig, tf.GPTBigCodeForCausalLM, dict(n_embd=64, n_head=4, n_layer=2)),
    "roberta": (tf.RobertaConfig, tf.RobertaModel, {}),
    "distilbert": (tf.DistilBertConfig, tf.DistilBertModel, dict(dim=64, n_heads=4, hidden_dim=128, n_layers=2)),
}


def _build(name):
    config_cls, model_cls, extra = ARCHS[name]
    config = config_cls(**{**SMALL, **extra})
    model = model_cls._from_config(config, attn_implementation="eager").eval()
    randomise_parameters(model, seed=3)
    return model


@pytest.mark.parametrize("name", list(ARCHS))
def test_capture_and_fold_norm(name):
    model = _build(name)
    cap = capture(model)
    assert cap.scopes[""].ok and _check_scopes_at_new_shape(model, cap) >= 2
    reference = copy.deepcopy(model)
    try:
        surgeon.apply(model, [FoldNorm()])
    except MatchError as err:  # post-norm encoders: nothing is foldable, and the error must say why
        assert "residual stream" in str(err)
        return
    batch = surgeon.example_inputs(model, batch=3, seq=5, seed=2)
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    for key in before:
        rel = float((before[key] - after[key]).double().norm() / before[key].double().norm())
        assert rel <= 1e-5, (name, key, rel)


@pytest.mark.parametrize("name", list(ARCHS))
def test_equivalent_transforms_are_exact(name):
    from surgeon.passes import Rotate, Smooth

    model = _build(name)
    reference = copy.deepcopy(model)
    batches = [surgeon.example_inputs(model, batch=2, seq=6, seed=s) for s in range(2)]
    surgeon.apply(model, [Smooth(), Rotate()], calibration=batches)  # each step certified ≤ 1e-5 on its scopes
    batch = surgeon.example_inputs(model, batch=3, seq=5, seed=2)
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    for key, value in before.items():
        assert float((after[key] - value).norm() / value.norm()) <= 1e-5, key


RESIDUAL_REFUSED = {"bloom": "embedding norm", "roberta": "post-norm", "distilbert": "post-norm"}


@pytest.mark.parametrize("name", list(ARCHS))
def test_residual_rotation_is_exact_or_refused_with_the_reason(name):
    from surgeon.passes import Rotate

    model = _build(name)
    if name in RESIDUAL_REFUSED:
        with pytest.raises(MatchError, match=RESIDUAL_REFUSED[name]):
            surgeon.apply(model, [Rotate(placement="residual")])
        return
    reference = copy.deepcopy(model)
    surgeon.apply(model, [Rotate(placement="residual")])  # certified ≤ 1e-5 on the model's outputs
    batch = surgeon.example_inputs(model, batch=3, seq=5, seed=2)
    before, after = output_tensors(run_model(reference, batch)), output_tensors(run_model(model, batch))
    for key, value in before.items():
        assert float((after[key] - value).norm() / value.norm()) <= 1e-5, key
