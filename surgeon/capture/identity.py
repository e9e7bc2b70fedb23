"""When two modules are the same scope: same class, same shapes, same configuration attributes.

Identical blocks are captured once and the graph reused, so the key must include every Python
attribute a forward could branch on (``attention_type``, ``sliding_window``, ...), but not the layer
index, which HF modules only use to find their slot in a cache.
"""

from __future__ import annotations

import re

from torch import nn

_INDEX_ATTR = re.compile(r"^(layer_idx|layer_index|layer_id|layer_number|block_idx|idx)$")
_PRIMITIVES = (bool, int, float, str, type(None))


def _primitive_attrs(module: nn.Module) -> tuple:
    items = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key == "training" or _INDEX_ATTR.match(key):
            continue
        if isinstance(value, _PRIMITIVES):
            items.append((key, value))
        elif isinstance(value, tuple) and all(isinstance(v, _PRIMITIVES) for v in value):
            items.append((key, value))
    return tuple(items)


def identity_key(module: nn.Module, memo: dict[int, tuple] | None = None) -> tuple:
    """A hashable key equal for modules that trace to the same graph.

    ``memo`` (id → key) lets one capture reuse the keys of submodules it already hashed.
    """
    if memo is not None and id(module) in memo:
        return memo[id(module)]
    own = tuple((name, tuple(t.shape), t.dtype)
                for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)])
    children = tuple((name, identity_key(child, memo)) for name, child in module.named_children())
    key = (type(module), own, _primitive_attrs(module), children)
    if memo is not None:
        memo[id(module)] = key
    return key


def shallow_key(module: nn.Module) -> tuple:
    """A module's own structure: class, own tensors, configuration attributes and child names."""
    own = tuple((name, tuple(t.shape), t.dtype)
                for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)])
    return (type(module), own, _primitive_attrs(module), tuple(name for name, _ in module.named_children()))
