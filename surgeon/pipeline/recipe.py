"""Recipes: ordered pass steps, from YAML/JSON files or built in Python, validated strictly.

File form::

    passes:
      - pass: fold_norm
        target: "model.layers.*.input_layernorm"
        expect: 2
        options: {}

Unknown passes, unknown keys and wrong types are errors naming the file, the step index and the key,
with the closest valid name. A recipe round-trips: ``Recipe.from_dict(r.to_dict()) == r``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from surgeon.errors import RecipeError
from surgeon.pipeline.config import COMMON_FIELDS, PassConfig, coerce
from surgeon.pipeline.registry import pass_named

STEP_KEYS = ("pass", "target", "expect", "options")


@dataclass(frozen=True)
class Recipe:
    """An ordered list of pass configs."""

    steps: tuple[PassConfig, ...]

    def __init__(self, steps: Iterable[PassConfig] = ()):
        steps = tuple(steps)
        for i, step in enumerate(steps):
            if not isinstance(step, PassConfig):
                raise RecipeError(f"step {i} is a {type(step).__name__}, not a pass config",
                                  fix="Build steps from the configs in `surgeon.passes`")
        object.__setattr__(self, "steps", steps)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_file(cls, path: str | Path) -> "Recipe":
        """Read a recipe from a ``.yaml``/``.yml``/``.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist", fix="Check the path passed as the recipe")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise RecipeError(f"cannot parse: {str(exc).splitlines()[0]}", where=str(path),
                              fix="Fix the syntax (recipes are YAML or JSON)") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<recipe>") -> "Recipe":
        """Build a recipe from parsed YAML/JSON (``{"passes": [...]}`` or a bare list of steps)."""
        if isinstance(data, dict):
            unknown = set(data) - {"passes"}
            if unknown:
                raise RecipeError(f"unknown top-level key `{sorted(unknown)[0]}`", where=source,
                                  fix="A recipe has one top-level key, `passes`, holding a list of steps")
            data = data.get("passes")
        if not isinstance(data, list):
            raise RecipeError("a recipe must hold a list of steps under `passes`", where=source,
                              fix="Write `passes:` followed by `- pass: NAME` items")
        return cls(_step(entry, i, source) for i, entry in enumerate(data))

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, every default filled in."""
        return {"passes": [step_to_dict(s) for s in self.steps]}

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def step_to_dict(config: PassConfig) -> dict[str, Any]:
    """One step as plain data (tuples become lists)."""
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in config.options().items()}
    return {"pass": config.pass_name, "target": config.target, "expect": config.expect, "options": options}


def _step(entry: Any, index: int, source: str) -> PassConfig:
    where = f"{source}, step {index}"
    if not isinstance(entry, dict):
        raise RecipeError(f"a step must be a mapping with a `pass` key, got {entry!r}", where=where,
                          fix="Write the step as `- pass: NAME`")
    for key in entry:
        if key not in STEP_KEYS:
            raise RecipeError(f"unknown key `{key}`", where=where, fix=_suggest(key, STEP_KEYS, "Step keys"))
    if "pass" not in entry:
        raise RecipeError("the step has no `pass` key", where=where, fix="Add `pass: NAME`")
    handler = pass_named(str(entry["pass"]), where=where)
    config_type = handler.config_type
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise RecipeError(f"`options` must be a mapping, got {options!r}", where=where,
                          fix="Write options as `options: {key: value}`")
    valid = [f.name for f in config_type.option_fields()]
    for key in options:
        if key not in valid:
            raise RecipeError(f"unknown option `{key}` for pass `{handler.name}`", where=where,
                              fix=_suggest(key, valid, f"Options of `{handler.name}`"))
    kwargs = {k: coerce(config_type, k, v) for k, v in options.items()}
    for key in COMMON_FIELDS:
        if entry.get(key) is not None:
            kwargs[key] = entry[key]
    try:
        return config_type(**kwargs)
    except RecipeError as exc:
        raise RecipeError(exc.what, where=where, fix=exc.fix) from None


def _suggest(key: str, valid: Iterable[str], what: str) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"Did you mean `{close[0]}`? " if close else ""
    return f"{hint}{what}: {', '.join(valid) if valid else '(none)'}"


def as_recipe(steps: "Recipe | PassConfig | Iterable[PassConfig] | str | Path | dict") -> Recipe:
    """Accept a Recipe, one config, a list of configs, a recipe file path, or recipe data."""
    if isinstance(steps, Recipe):
        return steps
    if isinstance(steps, PassConfig):
        return Recipe([steps])
    if isinstance(steps, (str, Path)):
        return Recipe.from_file(steps)
    if isinstance(steps, dict):
        return Recipe.from_dict(steps)
    return Recipe(list(steps))


def replace_options(config: PassConfig, **changes) -> PassConfig:
    """A copy of ``config`` with some fields changed (validated again)."""
    return dataclasses.replace(config, **changes)
