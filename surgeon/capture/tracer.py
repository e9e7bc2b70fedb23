"""The fx front end that works on transformers 5 (see GROUND.md).

Three things make decorated Hugging Face forwards traceable:
- the root is a generated wrapper whose placeholders are the tensors of one real call, so decorated
  forwards receive real tuples, dicts and flags rather than Proxies;
- every ``create_*`` mask builder of ``transformers.masking_utils`` is autowrapped, and the modules
  that call it are added to the tracer's autowrap search (fx only patches functions it finds in the
  searched globals, which for decorated forwards is not the modeling file);
- objects fx cannot print back as code (configs, caches) are lifted to attributes instead of being
  rebuilt from their repr on every call.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import keyword
import operator
import re
import sys
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.proxy import ParameterProxy
from torch.utils import _pytree as pytree

from surgeon.capture.calls import RecordedCall

INNER = "inner"  # attribute of the generated root that holds the traced module


@functools.lru_cache(maxsize=1)
def mask_builders() -> tuple:
    """Every ``create_*`` function of ``transformers.masking_utils``, discovered rather than listed."""
    try:
        import transformers.masking_utils as masking
    except ImportError:  # transformers is optional for plain nn.Modules
        return ()
    return tuple(
        fn
        for name, fn in vars(masking).items()
        if name.startswith("create_") and inspect.isfunction(fn) and fn.__module__ == masking.__name__
    )


_FIXED_META = ("dtype", "ndim", "device", "is_cuda", "layout", "is_sparse", "is_quantized")


class ScopeProxy(fx.Proxy):
    """A Proxy whose ``device`` is the scope's device: a scope runs on one device, and HF code
    branches on ``tensor.device.type`` (grouped MoE matmuls, for one)."""

    def __getattr__(self, k):
        if k == "device":
            device = getattr(self.tracer, "scope_device", None)
            if device is not None:
                return device
        return super().__getattr__(k)

    def __setitem__(self, key, value) -> None:
        # In-place indexed writes (``out[idx] = y``) become an ``operator.setitem`` node.
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class ShapeProxy(ScopeProxy):
    """A symbolic ``tensor.shape`` (or a slice of one) whose *length* is known.

    HF attention writes ``(*input_shape, -1, head_dim)``; fx cannot iterate a Proxy, but the rank of a
    scope's inputs is known, so the shape can be unpacked element by element while each element stays
    symbolic (the graph remains valid for other batch and sequence sizes).
    """

    def __init__(self, node, tracer, length: int):
        super().__init__(node, tracer)
        self.__dict__["_length"] = length

    def __len__(self) -> int:
        return self.__dict__["_length"]

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])

    def __getitem__(self, index):
        item = self.tracer.create_proxy("call_function", operator.getitem, (self, index), {})
        if isinstance(index, slice) and all(isinstance(v, (int, type(None))) for v in
                                            (index.start, index.stop, index.step)):
            return ShapeProxy(item.node, self.tracer, len(range(*index.indices(len(self)))))
        return item


class InputProxy(ScopeProxy):
    """A placeholder Proxy that answers dtype/ndim/device questions with the recorded input's values.

    HF forwards branch on them (``if attention_mask.ndim < 4``, ``if pixel_values.dtype != ...``).
    They do not depend on batch or sequence size, so the graph stays shape-generic; a graph installed
    back into a model checks them on every call (see ``surgeon.rewrite.CapturedModule``).
    """

    def __init__(self, node, tracer, example: torch.Tensor):
        super().__init__(node, tracer)
        self.__dict__["_example_meta"] = {k: getattr(example, k) for k in _FIXED_META}
        self.__dict__["_example_floating"] = example.is_floating_point()

    def __getattr__(self, k):
        meta = self.__dict__.get("_example_meta")
        if meta is not None and k in meta:
            return meta[k]
        if k == "shape" and meta is not None:
            node = self.tracer.create_proxy("call_function", getattr, (self, "shape"), {}).node
            return ShapeProxy(node, self.tracer, meta["ndim"])
        return super().__getattr__(k)

    def dim(self) -> int:
        """The recorded input's number of dimensions."""
        return self.__dict__["_example_meta"]["ndim"]

    def is_floating_point(self) -> bool:
        """Whether the recorded input is floating point."""
        return self.__dict__["_example_floating"]


class ParameterMetaProxy(ParameterProxy):
    """fx's parameter proxy (concrete shapes) that also answers ``dtype`` and ``device`` concretely."""

    @property
    def dtype(self) -> torch.dtype:
        """The parameter's dtype."""
        return self.param.dtype

    @property
    def device(self) -> torch.device:
        """The parameter's device."""
        return self.param.device


class ScopeTracer(fx.Tracer):
    """Traces one scope: ``leaf_fn(module, qualname)`` decides the leaves; fails name their module.

    ``examples`` maps placeholder names to the recorded tensors (see :class:`InputProxy`).
    """

    def __init__(self, root_module: nn.Module, leaf_fn, examples: dict[str, torch.Tensor] | None = None):
        super().__init__(autowrap_functions=mask_builders(), param_shapes_constant=True)
        self._leaf_fn = leaf_fn
        self._examples = examples or {}
        devices = {t.device for t in self._examples.values()}
        self.scope_device = devices.pop() if len(devices) == 1 else None
        self._constants: dict[int, str] = {}
        self.lifted: dict[str, Any] = {}
        seen = set()
        # Search the globals of every modeling module in the scope: that is where mask builders are called.
        for module in root_module.modules():
            mod = sys.modules.get(type(module).__module__)
            if mod is not None and id(mod) not in seen:
                seen.add(id(mod))
                self._autowrap_search.append(mod)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == INNER:
            return False
        return self._leaf_fn(m, module_qualified_name)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        result = super().getattr(attr, attr_val, parameter_proxy_cache)
        if type(result) is ParameterProxy:
            result.__class__ = ParameterMetaProxy
        return result

    def proxy(self, node: fx.Node) -> fx.Proxy:
        if node.op == "placeholder" and node.target in self._examples:
            return InputProxy(node, self, self._examples[node.target])
        return ScopeProxy(node, self)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # remember the innermost module whose forward could not be traced
            if not hasattr(exc, "surgeon_culprit") and path != INNER:
                exc.surgeon_culprit = path
            raise

    def create_arg(self, a: Any):
        if isinstance(a, (tuple, list, dict, fx.Proxy, torch.Tensor, nn.Module)) and not hasattr(a, "_fields"):
            return super().create_arg(a)  # containers recurse back into create_arg for their items
        if dataclasses.is_dataclass(a) and not isinstance(a, type):
            return self._lift(a)  # fx would rebuild a dataclass (a config) from its fields on every call
        try:
            return super().create_arg(a)
        except NotImplementedError:
            return self._lift(a)

    def _lift(self, value: Any) -> fx.Node:
        name = self._constants.get(id(value))
        if name is None:
            name = f"_surgeon_const_{len(self._constants)}"
            self._constants[id(value)] = name
            self.lifted[name] = value
        return self.create_node("get_attr", name, (), {})


class ScopeRoot(nn.Module):
    """Base of generated roots: rebuilds one recorded call from its tensors and runs the module."""

    def __init__(self, module: nn.Module, call: RecordedCall):
        super().__init__()
        setattr(self, INNER, module)
        leaves, self._spec = pytree.tree_flatten((call.args, call.kwargs))
        self._tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        self._leaves = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]

    def _run(self, *tensors):
        leaves = list(self._leaves)
        for slot, tensor in zip(self._tensor_slots, tensors):
            leaves[slot] = tensor
        args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        output = getattr(self, INNER)(*args, **kwargs)
        return tuple(pytree.tree_leaves(output))


def _identifier(text: str, taken: set[str]) -> str:
    name = re.sub(r"\W+", "_", text).strip("_") or "x"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"x_{name}"
    base, i = name, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def placeholder_names(module: nn.Module, call: RecordedCall) -> list[str]:
    """Readable names for a call's tensor leaves: the forward's parameter names and keyword keys."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p not in ("args", "kwargs")]
    taken: set[str] = set()
    names = []
    with_paths, _ = pytree.tree_flatten_with_path((call.args, call.kwargs))
    for path, leaf in with_paths:
        if not isinstance(leaf, torch.Tensor):
            continue
        parts = []
        for i, key in enumerate(path):
            if i == 0:
                continue  # 0 = args, 1 = kwargs
            if i == 1 and getattr(path[0], "idx", None) == 0:
                idx = key.idx
                parts.append(positional[idx] if idx < len(positional) else f"arg{idx}")
            else:
                parts.append(str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", "x")))))
        names.append(_identifier("_".join(parts), taken))
    return names


def make_root(module: nn.Module, call: RecordedCall) -> ScopeRoot:
    """A root module whose ``forward`` takes the call's tensors as named placeholders."""
    names = placeholder_names(module, call)
    signature = ", ".join(["self", *names])
    source = f"def forward({signature}):\n    return self._run({', '.join(names)})\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<surgeon root of {type(module).__name__}>", "exec"), namespace)
    cls = type(f"{type(module).__name__}Root", (ScopeRoot,), {"forward": namespace["forward"]})
    root = cls(module, call)
    root.examples = dict(zip(names, call.flat_tensors()))
    return root
