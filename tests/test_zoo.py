"""The built-in zoo and the example inputs derived from a model's config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.inputs import example_inputs, input_kind
from surgeon.zoo import ZOO, build_zoo_model, randomise_parameters, zoo_names

NAMES = zoo_names()
REQUIRED = [
    "tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gpt2", "tiny-bert", "tiny-vit", "tiny-mixtral",
    "tiny-gemma", "tiny-phi3", "tiny-qwen3", "tiny-opt",
]


def _main_output(out) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def _norm_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        leaf = name.rsplit(".", 1)[-1].lower()
        is_norm = "norm" in type(module).__name__.lower() or "norm" in leaf or leaf.startswith("ln")
        if is_norm and isinstance(weight, torch.Tensor) and weight.dim() == 1:
            found[name] = weight
    return found


def test_zoo_lists_required_names():
    assert set(REQUIRED) <= set(NAMES)
    assert list(ZOO) == NAMES
    for name, entry in ZOO.items():
        assert entry.name == name
        assert entry.kind in ("causal-lm", "encoder", "vision")


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs_forward_at_two_shapes(name):
    model = build_zoo_model(name)
    entry = ZOO[name]
    assert isinstance(model, entry.model_class)
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert model.surgeon_source == {"zoo": name, "num_layers": 2, "seed": 0}
    assert input_kind(model) == entry.kind
    for batch, seq in [(2, 8), (3, 5)]:
        inputs = example_inputs(model, batch=batch, seq=seq)
        with torch.no_grad():
            out = _main_output(model(**inputs))
        assert out.shape[0] == batch
        if entry.kind == "causal-lm":
            assert out.shape == (batch, seq, model.config.vocab_size)
        elif entry.kind == "encoder":
            assert out.shape == (batch, seq, model.config.hidden_size)
        assert torch.isfinite(out).all()
        assert out.std() > 0


@pytest.mark.parametrize("name", NAMES)
def test_weights_deterministic_per_seed_and_differ_across_seeds(name):
    a = dict(build_zoo_model(name, seed=0).named_parameters())
    b = dict(build_zoo_model(name, seed=0).named_parameters())
    c = dict(build_zoo_model(name, seed=1).named_parameters())
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], c[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_every_norm_weight_and_bias_is_randomised(name):
    model = build_zoo_model(name)
    norms = _norm_weights(model)
    assert norms, "no norm found: the detection in this test is broken"
    for key, weight in norms.items():
        # Neither the usual init (ones) nor Gemma's (zeros, applied as 1 + w).
        assert not torch.all(weight == 1), key
        assert not torch.all(weight == 0), key
    for key, param in model.named_parameters():
        if key.endswith("bias"):
            assert not torch.all(param == 0), key


def test_gpt2_embeddings_stay_tied():
    for dtype in (torch.float32, torch.bfloat16):
        model = build_zoo_model("tiny-gpt2", dtype=dtype)
        assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("name", [n for n in NAMES if ZOO[n].kind == "causal-lm"])
def test_tied_configs_share_the_embedding(name):
    model = build_zoo_model(name)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == bool(model.config.tie_word_embeddings)


def test_num_layers_and_shared_parameters_across_depths():
    two = build_zoo_model("tiny-llama")
    three = build_zoo_model("tiny-llama", num_layers=3)
    assert len(three.model.layers) == 3
    assert three.surgeon_source["num_layers"] == 3
    # Parameters are seeded by name, so the layers both builds have are identical.
    assert torch.equal(two.model.layers[1].mlp.up_proj.weight, three.model.layers[1].mlp.up_proj.weight)
    with pytest.raises(SurgeonError, match="num_layers"):
        build_zoo_model("tiny-llama", num_layers=0)


def test_bf16_build_is_the_cast_of_fp32():
    fp32 = build_zoo_model("tiny-qwen2")
    bf16 = build_zoo_model("tiny-qwen2", dtype=torch.bfloat16)
    for (key, p32), (_, p16) in zip(fp32.named_parameters(), bf16.named_parameters()):
        assert p16.dtype == torch.bfloat16
        assert torch.equal(p32.to(torch.bfloat16), p16), key
    assert bf16.config.dtype == torch.bfloat16
    inputs = example_inputs(bf16)
    with torch.no_grad():
        assert torch.isfinite(bf16(**inputs).logits).all()


def test_building_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_zoo_model("tiny-bert")
    assert torch.equal(torch.rand(3), expected)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(SurgeonError) as info:
        build_zoo_model("tiny-lama")
    message = str(info.value)
    assert "unknown zoo model 'tiny-lama'" in message
    assert "Did you mean 'tiny-llama'?" in message
    assert all(name in message for name in NAMES)


def test_randomise_parameters_perturbs_around_stored_1d_values():
    layer = nn.LayerNorm(256)
    randomise_parameters(layer, seed=3)
    assert abs(layer.weight.mean().item() - 1) < 0.05 and 0.05 < layer.weight.std().item() < 0.15
    assert abs(layer.bias.mean().item()) < 0.01 and 0.01 < layer.bias.std().item() < 0.03


# --- example_inputs -----------------------------------------------------------------------------------


def test_text_inputs_are_seeded_and_within_vocab():
    model = build_zoo_model("tiny-llama")
    a = example_inputs(model, batch=4, seq=16, seed=0)
    b = example_inputs(model, batch=4, seq=16, seed=0)
    c = example_inputs(model, batch=4, seq=16, seed=1)
    assert set(a) == {"input_ids", "attention_mask"}
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].dtype == torch.long
    assert 0 <= a["input_ids"].min() and a["input_ids"].max() < model.config.vocab_size
    # Causal LMs get no padding.
    assert torch.all(a["attention_mask"] == 1)


def test_encoder_inputs_pad_the_last_row():
    model = build_zoo_model("tiny-bert")
    mask = example_inputs(model, batch=3, seq=6)["attention_mask"]
    assert mask[:-1].eq(1).all()
    assert mask[-1].tolist() == [1, 1, 1, 1, 0, 0]
    single = example_inputs(model, batch=1, seq=6)["attention_mask"]
    assert single.eq(1).all()


def test_vision_inputs():
    model = build_zoo_model("tiny-vit", dtype=torch.bfloat16)
    inputs = example_inputs(model, batch=3)
    assert set(inputs) == {"pixel_values"}
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    assert inputs["pixel_values"].dtype == torch.bfloat16


def test_inputs_errors():
    with pytest.raises(SurgeonError, match="longer than the model's 128 positions"):
        example_inputs(build_zoo_model("tiny-gpt2"), seq=129)
    with pytest.raises(SurgeonError, match="no transformers config"):
        example_inputs(nn.Linear(2, 2))
