"""Record how submodules are called during one eager run.

Capture needs, for every module it traces, one real call: the positional and keyword arguments (to
build a root whose placeholders are that call's tensors), and the output (to check the graph against
eager). Hooks keep copies of the tensors, taken when the module returns: code after it may update them in
place. Example batches are small, so the copies cost little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils import _pytree as pytree


@dataclass
class RecordedCall:
    """One call of a module: its arguments and what it returned."""

    args: tuple
    kwargs: dict
    output: Any

    def flat_tensors(self) -> list[torch.Tensor]:
        """The call's tensor inputs in pytree order (the order of a scope graph's placeholders)."""
        leaves, _ = pytree.tree_flatten((self.args, self.kwargs))
        return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def record_calls(
    modules: Iterable[tuple[str, nn.Module]], run: Callable[[], Any]
) -> dict[str, RecordedCall]:
    """Run ``run()`` with hooks on ``modules`` and return the first call of each, by path."""
    calls: dict[str, RecordedCall] = {}
    handles = []

    def make_hook(path: str):
        def hook(module, args, kwargs, output):
            if path not in calls:
                # Copies, because later code may update these tensors in place (Falcon adds the
                # attention output into the MLP's output with `+=`), which would corrupt the record.
                args, kwargs, output = pytree.tree_map_only(torch.Tensor, _snapshot, (args, kwargs, output))
                calls[path] = RecordedCall(tuple(args), dict(kwargs), output)

        return hook

    try:
        for path, module in modules:
            handles.append(module.register_forward_hook(make_hook(path), with_kwargs=True))
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls
