"""Running a model on a batch the same way everywhere (capture, certification, the CLI)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.utils import _pytree as pytree


def call_kwargs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments surgeon calls a model with: the batch, no KV cache, dict outputs."""
    kwargs = dict(batch)
    config = getattr(model, "config", None)
    if config is not None:
        kwargs.setdefault("return_dict", True)
        if hasattr(config, "use_cache"):
            kwargs.setdefault("use_cache", False)
    return kwargs


def run_model(model: nn.Module, batch: Mapping[str, Any] | torch.Tensor) -> Any:
    """Call ``model`` on ``batch`` (a dict of keyword arguments, or one tensor) without gradients."""
    with torch.no_grad():
        if isinstance(batch, torch.Tensor):
            return model(batch)
        return model(**call_kwargs(model, batch))


def output_tensors(output: Any) -> dict[str, torch.Tensor]:
    """The floating-point tensors of a model output, named by their place in it."""
    leaves, _ = pytree.tree_flatten_with_path(output)
    named = {}
    for path, leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            named[pytree.keystr(path) or "output"] = leaf
    return named
