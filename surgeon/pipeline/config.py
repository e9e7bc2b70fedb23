"""Pass configs: frozen, typed dataclasses validated on construction.

Every pass has one config class (the dispatch key of its handler). Common fields: ``target`` (which
sites, see :mod:`surgeon.pipeline.targets`) and ``expect`` (an exact count, or ``">=N"``). The rest are
the pass's options, typed; a wrong type or value raises a :class:`~surgeon.errors.RecipeError` naming
the pass and the field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

from surgeon.errors import RecipeError

_EXPECT = re.compile(r"^(>=|<=|==)?\s*(\d+)$")
COMMON_FIELDS = ("target", "expect")


@dataclass(frozen=True, kw_only=True)
class PassConfig:
    """Base of every pass config: ``target`` selects sites, ``expect`` states how many must match."""

    pass_name: ClassVar[str] = ""
    version: ClassVar[int] = 1

    target: str = "*"
    expect: int | str | None = None

    def __post_init__(self):
        validate(self)

    def options(self) -> dict[str, Any]:
        """The pass-specific options (every field except ``target`` and ``expect``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in COMMON_FIELDS}

    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        """The dataclass fields of the pass-specific options."""
        return [f for f in dataclasses.fields(cls) if f.name not in COMMON_FIELDS]

    def expected_range(self) -> tuple[int, int | None] | None:
        """``expect`` as an inclusive (low, high) range; None when not set."""
        if self.expect is None:
            return None
        if isinstance(self.expect, int):
            return self.expect, self.expect
        op, n = _EXPECT.match(self.expect.strip()).groups()
        n = int(n)
        return {">=": (n, None), "<=": (0, n)}.get(op, (n, n))


def validate(config: PassConfig) -> None:
    """Check every field's value against its annotation; raise RecipeError naming the field."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        expected = hints.get(f.name, Any)
        if not _conforms(value, expected):
            raise RecipeError(
                f"option `{f.name}` of pass `{config.pass_name}` must be {describe_type(expected)}, "
                f"got {value!r} ({type(value).__name__})",
                fix=f"Change `{f.name}` to {describe_type(expected)}",
            )
    if isinstance(config.expect, str) and not _EXPECT.match(config.expect.strip()):
        raise RecipeError(
            f"option `expect` of pass `{config.pass_name}` must be a count like 2 or '>=1', got {config.expect!r}",
            fix="Write `expect: 4` for an exact count or `expect: '>=1'` for a minimum",
        )
    check = getattr(config, "check", None)
    if callable(check):
        check()


def _conforms(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = get_origin(expected)
    if origin is Literal:
        return value in get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in get_args(expected))
    if origin in (tuple,):
        args = get_args(expected)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(args) == len(value) and all(_conforms(v, a) for v, a in zip(value, args))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def describe_type(expected: Any) -> str:
    """A readable description of a type annotation, for messages and ``surgeon passes``."""
    origin = get_origin(expected)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(expected))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(expected))
    if expected is type(None):
        return "null"
    if origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        expected, getattr(expected, "__name__", str(expected)))


def coerce(config_cls: type[PassConfig], name: str, value: Any) -> Any:
    """Convert recipe values to field types where YAML/JSON cannot express them (lists → tuples)."""
    hints = typing.get_type_hints(config_cls)
    expected = hints.get(name)
    if isinstance(value, list) and (get_origin(expected) is tuple or _union_has_tuple(expected)):
        return tuple(value)
    return value


def _union_has_tuple(expected: Any) -> bool:
    return get_origin(expected) in (typing.Union, types.UnionType) and any(
        get_origin(a) is tuple for a in get_args(expected))
