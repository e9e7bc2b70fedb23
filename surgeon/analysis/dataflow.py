"""Which submodules of a leaf read one of its inputs, found by running the leaf once.

An attention module that fx cannot trace is still a plain forward: run it on its recorded call under a
``TorchFunctionMode`` and watch where the input tensor goes. A Linear-like submodule that receives it
reads it *linearly* (a per-channel scale on the input can be folded into its weight); any other use
(an elementwise op, a norm, a transpose, a residual add) is a non-linear reader that blocks folding.
Shape and dtype queries are not reads. This is the "analysis" of DESIGN.md §1: it tells a weight-only
rewrite what the leaf does with its input without replacing the leaf's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from surgeon.patterns.structure import is_linear

_METADATA_CALLS = {"size", "dim", "numel", "nelement", "stride", "is_floating_point", "is_contiguous",
                   "element_size", "data_ptr", "get_device", "is_complex", "storage_offset"}
_METADATA_ATTRS = {"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "layout", "is_meta",
                   "names", "grad_fn", "is_leaf", "is_sparse", "is_quantized", "is_nested"}


@dataclass(frozen=True)
class Reader:
    """One place that reads the tracked input: a module path and whether it reads it through a Linear."""

    path: str
    op: str
    linear: bool


def _is_metadata(func: Callable) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _METADATA_ATTRS
    return name in _METADATA_CALLS


def _contains(tree: Any, tensors: torch.Tensor | list[torch.Tensor]) -> bool:
    tensors = tensors if isinstance(tensors, list) else [tensors]
    return any(leaf is t for leaf in pytree.tree_leaves(tree) for t in tensors)


_RESHAPES = {"view", "reshape", "contiguous", "flatten"}


def _regroups_rows(func: Callable, args: tuple, result: Any) -> bool:
    """A reshape that keeps the last (channel) dimension whole: readers of the result read the input."""
    if getattr(func, "__name__", "") not in _RESHAPES or not args or not isinstance(result, torch.Tensor):
        return False
    source = args[0]
    return (isinstance(source, torch.Tensor) and source.dim() > 0 and result.dim() > 0
            and source.shape[-1] == result.shape[-1] and source.numel() == result.numel())


class _ReadWatcher(TorchFunctionMode):
    def __init__(self, tracked: list[torch.Tensor], stack: list[tuple[str, nn.Module]], readers: list[Reader]):
        super().__init__()
        self.tracked, self.stack, self.readers = tracked, stack, readers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        path, module = self.stack[-1]
        inside_childless = next(module.children(), None) is None and len(self.stack) > 1
        reads = not inside_childless and not _is_metadata(func) and _contains((args, kwargs), self.tracked)
        result = func(*args, **kwargs)
        if reads:
            if _regroups_rows(func, args, result):
                self.tracked.append(result)  # same channels, rows regrouped: follow it
            else:
                self.readers.append(Reader(path, getattr(func, "__name__", str(func)), linear=False))
        return result


def readers_of(module: nn.Module, path: str, args: tuple, kwargs: dict, tensor: torch.Tensor) -> list[Reader]:
    """Every reader of ``tensor`` (one of ``module``'s inputs) when ``module(*args, **kwargs)`` runs.

    ``path`` is ``module``'s path in the model; reader paths are full paths.
    """
    readers: list[Reader] = []
    tracked = [tensor]
    stack: list[tuple[str, nn.Module]] = [(path, module)]
    handles = []

    def pre(sub_path: str):
        def hook(sub, sub_args, sub_kwargs):
            childless = next(sub.children(), None) is None
            if childless and _contains((sub_args, sub_kwargs), tracked):
                readers.append(Reader(sub_path, type(sub).__name__, linear=is_linear(sub)))
            stack.append((sub_path, sub))

        return hook

    def post(sub, sub_args, sub_kwargs, out):
        stack.pop()

    for name, sub in module.named_modules():
        if name:
            full = f"{path}.{name}" if path else name
            handles.append(sub.register_forward_pre_hook(pre(full), with_kwargs=True))
            handles.append(sub.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad(), _ReadWatcher(tracked, stack, readers):
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return readers


def calls_inside(module: nn.Module, path: str, args: tuple, kwargs: dict,
                 wanted: Callable[[Callable], bool]) -> list[tuple[str, str]]:
    """(innermost module path, function name) for every call of a function ``wanted`` accepts."""
    found: list[tuple[str, str]] = []
    stack = [path]
    handles = []

    class Watcher(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if wanted(func):
                found.append((stack[-1], getattr(func, "__name__", str(func))))
            return func(*args, **(kwargs or {}))

    def enter(sub_path: str):
        def hook(sub, sub_args) -> None:
            stack.append(sub_path)

        return hook

    def leave(sub, sub_args, out) -> None:
        stack.pop()  # a forward hook must return None, or it replaces the module's output

    for name, sub in module.named_modules():
        if name:
            handles.append(sub.register_forward_pre_hook(enter(f"{path}.{name}" if path else name)))
            handles.append(sub.register_forward_hook(leave))
    try:
        with torch.no_grad(), Watcher():
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found
