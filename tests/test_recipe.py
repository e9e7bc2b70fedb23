"""Recipes: strict validation with messages naming file, step and key; round trips; count checks."""

from __future__ import annotations

import json

import pytest

import surgeon
from surgeon.errors import MatchError, RecipeError
from surgeon.passes import FoldNorm, SwapActivation
from surgeon.pipeline.recipe import Recipe


def _write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_recipe_loads_and_round_trips(tmp_path):
    path = _write(tmp_path, """
passes:
  - pass: fold_norm
    target: "model.layers.*.input_layernorm"
    expect: 2
  - pass: swap_activation
    options: {to: relu}
""")
    recipe = Recipe.from_file(path)
    assert recipe.steps == (FoldNorm(target="model.layers.*.input_layernorm", expect=2), SwapActivation(to="relu"))
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    again = Recipe.from_file(_write(tmp_path, recipe.to_yaml(), "again.yaml"))
    assert again == recipe
    assert recipe.to_dict()["passes"][1] == {"pass": "swap_activation", "target": "*", "expect": None,
                                             "options": {"to": "relu"}}


def test_unknown_pass_names_file_step_and_suggests(tmp_path):
    path = _write(tmp_path, "passes:\n  - pass: fold_norm\n  - pass: swap_activaton\n")
    with pytest.raises(RecipeError) as err:
        Recipe.from_file(path)
    message = str(err.value)
    assert f"{path}, step 1" in message and "unknown pass `swap_activaton`" in message
    assert "Did you mean `swap_activation`" in message


def test_unknown_step_key_is_named(tmp_path):
    path = _write(tmp_path, "passes:\n  - pass: fold_norm\n    targte: '*'\n")
    with pytest.raises(RecipeError, match=r"step 0: unknown key `targte`.*Did you mean `target`"):
        Recipe.from_file(path)


def test_unknown_option_is_named_with_suggestion(tmp_path):
    path = _write(tmp_path, "passes:\n  - pass: swap_activation\n    options: {too: gelu}\n")
    with pytest.raises(RecipeError, match=r"step 0: unknown option `too` for pass `swap_activation`.*`to`"):
        Recipe.from_file(path)


def test_wrong_type_names_the_field(tmp_path):
    path = _write(tmp_path, "passes:\n  - pass: swap_activation\n    options: {to: 3}\n")
    with pytest.raises(RecipeError, match=r"step 0: option `to` of pass `swap_activation` must be a string, got 3"):
        Recipe.from_file(path)
    path = _write(tmp_path, "passes:\n  - pass: fold_norm\n    expect: lots\n", "b.yaml")
    with pytest.raises(RecipeError, match=r"option `expect` of pass `fold_norm`"):
        Recipe.from_file(path)


def test_malformed_files_are_reported(tmp_path):
    with pytest.raises(RecipeError, match="cannot parse"):
        Recipe.from_file(_write(tmp_path, "passes: [\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.from_file(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="unknown top-level key `pases`"):
        Recipe.from_file(_write(tmp_path, "pases: []\n", "c.yaml"))
    with pytest.raises(RecipeError, match="json.*step 0: the step has no `pass` key"):
        Recipe.from_file(_write(tmp_path, '{"passes": [{"target": "*"}]}', "d.json"))


def test_step_matching_nothing_is_an_error_listing_candidates():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(MatchError) as err:
        surgeon.apply(model, [FoldNorm(target="model.layers.*.mlp")])
    message = str(err.value)
    assert "step 0, pass `fold_norm`" in message and "matched no norm for target 'model.layers.*.mlp'" in message
    assert "model.layers.0.input_layernorm" in message


def test_unmet_expect_is_an_error():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    with pytest.raises(MatchError, match="expected 3 matches for target 'model.layers.*.mlp' but found 2"):
        surgeon.apply(model, [SwapActivation(target="model.layers.*.mlp", expect=3)])
    with pytest.raises(MatchError, match="expected >=3"):
        surgeon.apply(model, [SwapActivation(target="model.layers.*.mlp", expect=">=3")])


def test_targets_by_regex_and_type_name():
    model = surgeon.load_model("tiny-llama", num_layers=3)
    surgeon.apply(model, [SwapActivation(to="relu", target=r"re:model\.layers\.(0|2)\.mlp", expect=2)])
    surgeon.apply(model, [SwapActivation(to="gelu", target="LlamaMLP", expect=3)])
    assert [r.matched for r in surgeon.report(model)][1] == [f"model.layers.{i}.mlp" for i in range(3)]


def test_bad_regex_target_is_a_recipe_error():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(RecipeError, match="invalid regular expression"):
        surgeon.apply(model, [FoldNorm(target="re:(")])


def test_recipe_refuses_non_configs():
    with pytest.raises(RecipeError, match="step 0 is a str"):
        Recipe(["fold_norm"])
