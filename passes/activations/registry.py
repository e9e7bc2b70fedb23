"""Named activations that passes can put into a model, and a way to register more.

``register_activation("name", factory)`` makes ``name`` valid wherever a pass takes an activation
(``swap_activation``'s ``to``); the factory builds a fresh ``nn.Module`` for each site.
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from surgeon.passes.activations.layers import CRReLU, PolyNorm, PolyReLU

ActivationFactory = Callable[[], nn.Module]

_ACTIVATIONS: dict[str, ActivationFactory] = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "polyrelu": PolyReLU,
    "polynorm": PolyNorm,
    "crrelu": CRReLU,
}


def register_activation(name: str, factory: ActivationFactory, *, replace: bool = False) -> None:
    """Register ``factory`` (a callable returning an ``nn.Module``) under ``name``."""
    if not name.isidentifier():
        raise ValueError(f"activation names are identifiers, got {name!r}")
    if name in _ACTIVATIONS and not replace:
        raise ValueError(f"activation {name!r} is already registered (pass replace=True to override)")
    _ACTIVATIONS[name] = factory


def activation_names() -> list[str]:
    """Every registered activation name."""
    return sorted(_ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    """A new module of the activation registered as ``name``."""
    return _ACTIVATIONS[name]()


def unknown_activation_hint(name: str) -> str:
    """A fix line for an unknown activation name: the closest name and the valid ones."""
    close = difflib.get_close_matches(name, activation_names(), n=1)
    hint = f"Did you mean `{close[0]}`? " if close else ""
    return f"{hint}Registered activations: {', '.join(activation_names())} (add more with register_activation)"
