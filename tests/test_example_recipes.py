"""Every example recipe parses, and every registered pass has at least one example recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

import surgeon
from surgeon.pipeline.recipe import Recipe
from surgeon.pipeline.registry import registered_passes

RECIPES = sorted((Path(__file__).resolve().parents[1] / "examples" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_example_recipe_parses_and_round_trips(path):
    recipe = Recipe.from_file(path)
    assert len(recipe) >= 1
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_every_pass_has_an_example_recipe():
    assert surgeon.passes  # registers the passes
    used = {step.pass_name for path in RECIPES for step in Recipe.from_file(path)}
    missing = {n for n in registered_passes() if not n.startswith("test_")} - used
    assert not missing, f"add examples/recipes/<pass>.yaml for: {sorted(missing)}"
