"""The pass registry: one handler per config type, registered with ``@register_pass(ConfigType)``.

A handler states its name (the recipe's ``pass:``), what it ``preserves`` (``exact``: the manager fails
the pass when outputs move by more than 1e-5 relative in fp32; ``approx`` and ``changes``: the
manager reports the error), the paper it comes from, and implements
``requires → find → rewrite → ensures``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from torch import nn

from surgeon.errors import RecipeError
from surgeon.pipeline.config import PassConfig

Preserves = Literal["exact", "approx", "changes"]
C = TypeVar("C", bound=PassConfig)


@dataclass
class Site:
    """One place a pass acts on. ``path`` is what targets select; ``scope`` the scope it was found in."""

    path: str
    scope: str
    data: Any = None


@dataclass
class Found:
    """What ``find`` returns: the sites it can rewrite, and (path, reason) for those it cannot."""

    sites: list[Site] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class PassContext:
    """What a handler may use: the model, its current capture, the calibration batches, prior passes."""

    def __init__(self, model: nn.Module, capture_fn, calibration=None, history: tuple[str, ...] = ()):
        """``capture_fn(model, previous)`` captures the model, reusing ``previous`` (or None) where it can."""
        self.model = model
        self._capture_fn = capture_fn
        self._capture = None
        self._previous = None
        self.notes: list[str] = []  # lines a handler wants in its step's report (achieved sparsity, ...)
        self.calibration = calibration
        self.history = history

    @property
    def capture(self):
        """The model's capture, taken on first use after each change."""
        if self._capture is None:
            self._capture = self._capture_fn(self.model, self._previous)
            self._previous = None
        return self._capture

    def invalidate(self) -> None:
        """Forget the capture (the model changed); the next one reuses its unchanged scopes."""
        if self._capture is not None:
            self._previous = self._capture
        self._capture = None


class PassHandler(Generic[C]):
    """Base class of pass handlers. Subclasses set the class attributes and implement ``find``/``rewrite``."""

    config_type: ClassVar[type[PassConfig]]
    name: ClassVar[str]
    preserves: ClassVar[Preserves]
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    site_kind: ClassVar[str] = "module"  # what a site path names, for messages and docs

    def requires(self, ctx: PassContext, config: C) -> None:
        """Preconditions; raise SurgeonError when the model cannot take this pass."""

    def find(self, ctx: PassContext, config: C) -> Found:
        """Every site the pass could act on (before target filtering), and skipped ones with reasons."""
        raise NotImplementedError

    def rewrite(self, ctx: PassContext, config: C, sites: list[Site]) -> bool:
        """Rewrite the selected sites; return whether the model changed."""
        raise NotImplementedError

    def ensures(self, ctx: PassContext, config: C, sites: list[Site]) -> None:
        """Postconditions; raise when the rewrite left the model in a state the pass does not allow."""

    def replay(self, model: nn.Module, config: C, record: Any) -> None:
        """Re-apply the rewrite structurally from its saved record (for loading saved models)."""
        raise NotImplementedError(f"pass {self.name} cannot be replayed")


_BY_NAME: dict[str, PassHandler] = {}
_BY_CONFIG: dict[type, PassHandler] = {}


def register_pass(config_type: type[PassConfig]):
    """Class decorator registering a handler for ``config_type`` (its name is ``config_type.pass_name``)."""

    def decorate(handler_cls: type[PassHandler]) -> type[PassHandler]:
        name = config_type.pass_name
        if not name:
            raise TypeError(f"{config_type.__name__} needs a `pass_name`")
        if name in _BY_NAME and type(_BY_NAME[name]) is not handler_cls:
            raise TypeError(f"pass {name!r} is registered twice")
        handler_cls.config_type = config_type
        handler_cls.name = name
        handler = handler_cls()
        _BY_NAME[name] = handler
        _BY_CONFIG[config_type] = handler
        return handler_cls

    return decorate


def handler_for(config: PassConfig) -> PassHandler:
    """The handler registered for ``config``'s type."""
    try:
        return _BY_CONFIG[type(config)]
    except KeyError:
        raise RecipeError(f"no pass is registered for config type {type(config).__name__}") from None


def pass_named(name: str, *, where: str | None = None) -> PassHandler:
    """The handler registered as ``name``; a RecipeError suggesting the closest name otherwise."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
    hint = f"Did you mean `{close[0]}`? " if close else ""
    raise RecipeError(f"unknown pass `{name}`", where=where,
                      fix=f"{hint}Registered passes: {', '.join(sorted(_BY_NAME))}")


def registered_passes() -> dict[str, PassHandler]:
    """Every registered pass by name."""
    return dict(sorted(_BY_NAME.items()))
