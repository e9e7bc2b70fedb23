"""Rewriting the module tree: replacing submodules, untying shared weights, installing rewritten graphs.

The model stays an ``nn.Module`` tree of its own class (``generate()`` keeps working). A rewrite either
replaces a submodule in place, edits parameters, or, when it changed a scope's code (a functional
activation replaced by a module, a node inserted), installs the scope's rewritten graph in place of the
scope's module, wrapped in :class:`CapturedModule` so callers keep calling it as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from surgeon.capture import Capture, RecordedCall
from surgeon.capture.scopes import bind_graph
from surgeon.errors import SurgeonError


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Replace the submodule at ``path`` with ``module``; returns the module that was there."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, name)
    setattr(parent, name, module)
    return old


def tie_groups(model: nn.Module) -> dict[int, list[str]]:
    """For every parameter, keyed by ``id``, the names it appears under (several when tied)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return groups


def untie(model: nn.Module, module_path: str, attr: str = "weight", groups: dict[int, list[str]] | None = None) -> bool:
    """Give ``module_path.attr`` its own copy when it is shared with other modules; True if it was.

    ``groups`` (from :func:`tie_groups`) saves rescanning the model when untying many modules.
    """
    module = model.get_submodule(module_path)
    param = getattr(module, attr)
    names = (groups if groups is not None else tie_groups(model)).get(id(param), [])
    if len(names) <= 1:
        return False
    setattr(module, attr, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
    if groups is not None:
        own = f"{module_path}.{attr}"
        groups[id(param)] = [n for n in names if n != own]
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # so transformers does not tie them again on save/load
    return True


def instance_graph_module(cap: Capture, path: str) -> fx.GraphModule:
    """A fresh GraphModule of the scope graph of instance ``path``, bound to that instance's modules."""
    scope = cap.scope_at(path)
    if scope is None or scope.graph_module is None:
        raise SurgeonError(f"{path or '<model>'} has no captured graph",
                           fix="Inspect the capture report for the reason")
    return bind_graph(scope.graph_module, cap.model.get_submodule(path))


class CapturedModule(nn.Module):
    """A rewritten scope graph standing where the original module stood, called the same way.

    The graph takes the call's tensors in pytree order and returns its output leaves; this wrapper
    flattens the caller's arguments, checks that every non-tensor argument equals the one the graph was
    traced with (fx baked them in), runs the graph and rebuilds the original output structure.
    """

    def __init__(self, graph_module: fx.GraphModule, call: RecordedCall, original_class: str):
        super().__init__()
        self.graph_module = graph_module
        self.original_class = original_class
        leaves, self._in_spec = pytree.tree_flatten((call.args, call.kwargs))
        self._constants = [None if isinstance(v, torch.Tensor) else v for v in leaves]
        self._out_spec = pytree.tree_flatten(call.output)[1]

    def forward(self, *args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self._in_spec or any(
            c is not None and not isinstance(v, torch.Tensor) and not _same(c, v)
            for c, v in zip(self._constants, leaves)
        ):
            raise SurgeonError(
                f"the rewritten {self.original_class} is called with arguments other than those it was "
                "captured with (its graph fixed them)",
                fix="Call the model the way it was captured (for example with use_cache=False)",
            )
        outputs = self.graph_module(*[v for v in leaves if isinstance(v, torch.Tensor)])
        return pytree.tree_unflatten(list(outputs), self._out_spec)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a plain equality
        return a is b


def install_graph(cap: Capture, path: str, graph_module: fx.GraphModule) -> CapturedModule:
    """Put ``graph_module`` (a rewritten graph of instance ``path``) in the model in place of that module."""
    if not path:
        raise SurgeonError("the model's own scope cannot be replaced by a graph",
                           fix="Target a submodule (an MLP or a block) instead")
    call = cap.calls.get(path)
    if call is None:
        raise SurgeonError(f"{path} was not called on the example inputs, so its call signature is unknown")
    original = cap.model.get_submodule(path)
    wrapped = CapturedModule(graph_module, call, type(original).__name__)
    set_submodule(cap.model, path, wrapped)
    return wrapped
