"""Scopes: submodules captured into fx graphs with a leaf policy, and the capture of a whole model.

A model is captured as nested scopes (DESIGN.md §1):
- the *model scope* traces the root through the wrappers around the repeated blocks
  (``LlamaForCausalLM`` → ``LlamaModel``) and keeps the blocks (members of a ``ModuleList`` of one
  class) and every other composite child as leaves, so it shows embeddings, the residual stream and
  the head;
- every other scope traces one module's own ``forward`` with its children as leaves: a block scope
  shows norms, attention, MLP and residual adds; an MLP scope shows Linear / activation / gating.
Each composite leaf becomes a scope of its own. Modules without children (Linear, norms,
activations, rotary tables) are always leaves: they are the units passes replace.
If tracing fails inside a child, that child becomes a leaf and tracing is retried (the recursive
fallback); the report names each such child and why.
"""

from __future__ import annotations

import builtins
import copy
import keyword
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from surgeon.capture.calls import RecordedCall
from surgeon.capture.tracer import INNER, ScopeTracer, make_root

MAX_FALLBACKS = 32
CAPTURE_RTOL = 1e-6


@dataclass
class Scope:
    """One captured module class-instance group: a graph shared by identical module instances.

    ``path`` is the first instance's module path ("" for the model), ``instances`` every path whose
    module traced to the same graph. ``graph_module`` runs the first instance; targets in the graph
    are relative to the scope's module. ``failure`` is set when no graph could be made.
    """

    path: str
    instances: list[str]
    module_class: str
    kind: str  # "model" | "module"
    graph_module: fx.GraphModule | None = None
    call: RecordedCall | None = None
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    failure: str | None = None
    trace_seconds: float = 0.0
    key: Any = field(default=None, repr=False)  # what made instances identical; reuse across captures
    reused: bool = False  # the graph came from the previous capture (same structure, rebound)

    @property
    def graph(self) -> fx.Graph | None:
        """The scope's fx graph, or None when capture failed."""
        return None if self.graph_module is None else self.graph_module.graph

    @property
    def ok(self) -> bool:
        """True when the scope has a graph that reproduces eager outputs."""
        return self.graph_module is not None

    def node_count(self) -> int:
        """Number of nodes in the graph (0 when capture failed)."""
        return 0 if self.graph is None else len(self.graph.nodes)

    def leaf_targets(self) -> list[str]:
        """Relative paths of the modules called as leaves in the graph."""
        if self.graph is None:
            return []
        return list(dict.fromkeys(n.target for n in self.graph.nodes if n.op == "call_module"))


def join(prefix: str, name: str) -> str:
    """Join module path segments, treating "" as the root."""
    if not name:
        return prefix
    return f"{prefix}.{name}" if prefix else name


def relative(path: str, prefix: str) -> str:
    """``path`` relative to ``prefix`` (both module paths)."""
    if not prefix:
        return path
    assert path == prefix or path.startswith(prefix + "."), (path, prefix)
    return path[len(prefix) + 1 :]


def find_blocks(model: nn.Module) -> set[int]:
    """ids of repeated blocks: members of a ModuleList whose members share one class and have children."""
    blocks: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            classes = {type(m) for m in module}
            if len(classes) == 1 and any(True for _ in module[0].children()):
                blocks.update(id(m) for m in module)
    return blocks


def block_ancestors(root: nn.Module, blocks: set[int]) -> set[int]:
    """ids of the modules that contain a block (the root included), found in one walk."""
    ancestors: set[int] = set()
    by_path = dict(root.named_modules())
    for path, module in by_path.items():
        if id(module) in blocks and path:
            parts = path.split(".")
            for i in range(len(parts)):
                ancestors.add(id(by_path[".".join(parts[:i])]))
    return ancestors


def _has_children(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}"


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """‖reference − other‖ / ‖reference‖ in float64 (0 when both are zero)."""
    ref = reference.detach().double()
    diff = (ref - other.detach().double()).norm()
    scale = ref.norm()
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / scale)


def compare_outputs(expected: Any, actual: Any) -> float:
    """The largest relative error over the tensor leaves of two outputs of the same structure."""
    exp = [t for t in pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    act = [t for t in pytree.tree_leaves(actual) if isinstance(t, torch.Tensor)]
    if len(exp) != len(act):
        return float("inf")
    worst = 0.0
    for e, a in zip(exp, act):
        if e.shape != a.shape:
            return float("inf")
        if e.is_floating_point():
            worst = max(worst, relative_error(e, a))
        elif not torch.equal(e, a):
            return float("inf")
    return worst


def trace_scope(module: nn.Module, call: RecordedCall, *, kind: str, blocks: set[int]) -> tuple[
    fx.GraphModule | None, list[tuple[str, str]], str | None
]:
    """Trace ``module`` as called in ``call``; returns (graph module, fallbacks, failure reason)."""
    forced: dict[str, str] = {}
    fallbacks: list[tuple[str, str]] = []
    # The model scope inlines only the wrappers around the blocks (``LlamaForCausalLM`` → ``LlamaModel``),
    # so it shows the residual stream; every other composite (embeddings, MLPs, heads) stays a leaf.
    wrappers = block_ancestors(module, blocks)

    def leaf_fn(m: nn.Module, qualname: str) -> bool:
        rel = qualname[len(INNER) + 1 :]
        if rel in forced or not _has_children(m):
            return True
        if kind == "model":
            return id(m) not in wrappers
        return True

    for _ in range(MAX_FALLBACKS):
        root = make_root(module, call)
        tracer = ScopeTracer(module, leaf_fn, root.examples)
        try:
            graph = tracer.trace(root)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is reported, not raised
            culprit = getattr(exc, "surgeon_culprit", None)
            rel = culprit[len(INNER) + 1 :] if culprit else None
            if rel and rel not in forced:
                forced[rel] = _short_reason(exc)
                fallbacks.append((rel, forced[rel]))
                continue
            return None, fallbacks, _short_reason(exc)
        return _build_graph_module(module, root, tracer, graph), fallbacks, None
    return None, fallbacks, f"gave up after {MAX_FALLBACKS} fallbacks"


def _build_graph_module(module, root, tracer, graph: fx.Graph) -> fx.GraphModule:
    """Re-root the traced graph on the scope's own module: targets lose the wrapper's prefix."""
    attrs: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        target = node.target
        if target == INNER or target.startswith(INNER + "."):
            rel = target[len(INNER) + 1 :]
            node.target = rel
            attrs[rel] = module.get_submodule(rel) if node.op == "call_module" else _resolve(module, rel)
        elif target in tracer.lifted:
            attrs[target] = tracer.lifted[target]
        else:
            attrs[target] = _resolve(root, target)
    for node in list(graph.nodes):
        if node.name.startswith(INNER + "_"):
            short = node.name[len(INNER) + 1 :]
            if short == "self" or keyword.iskeyword(short) or hasattr(builtins, short):
                short = f"{short}_out"  # generated code must not shadow `self` or builtins
            node._rename(short)
    gm = fx.GraphModule(attrs, graph, class_name=f"{type(module).__name__}Graph")
    for name, value in tracer.lifted.items():
        setattr(gm, name, value)
    return gm


def bind_graph(graph_module: fx.GraphModule, module: nn.Module) -> fx.GraphModule:
    """A copy of ``graph_module``'s graph bound to ``module``'s submodules (another identical instance,
    or the same module after a pass replaced some of its leaves); lifted constants are carried over."""
    graph = copy.deepcopy(graph_module.graph)
    attrs: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            try:
                attrs[node.target] = _resolve(module, node.target)
            except AttributeError:
                attrs[node.target] = _resolve(graph_module, node.target)
    bound = fx.GraphModule(attrs, graph, class_name=graph_module.__class__.__name__)
    for name in dir(graph_module):
        if name.startswith("_surgeon_const_"):
            setattr(bound, name, getattr(graph_module, name))
    return bound


def same_signature(a: RecordedCall, b: RecordedCall) -> bool:
    """True when two calls have the same structure, constants, and tensor dtypes and ranks: a graph
    traced from one is valid for the other."""
    leaves_a, spec_a = pytree.tree_flatten((a.args, a.kwargs))
    leaves_b, spec_b = pytree.tree_flatten((b.args, b.kwargs))
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype or x.dim() != y.dim() or x.device != y.device:
                return False
        elif x is not y:
            try:
                if not bool(x == y):
                    return False
            except Exception:  # noqa: BLE001 - objects without plain equality
                return False
    return True


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def verify_scope(gm: fx.GraphModule, call: RecordedCall) -> float:
    """Run the graph on the recorded call (propagating shapes into node meta) and compare with eager."""
    tensors = call.flat_tensors()
    with torch.no_grad():
        outputs = ShapeProp(gm).propagate(*tensors)
    expected = tuple(pytree.tree_leaves(call.output))
    return compare_outputs(expected, outputs)


def iter_module_paths(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) for the root and every module with children: the possible scopes."""
    for path, module in model.named_modules():
        if path == "" or _has_children(module):
            yield path, module


def scope_started() -> float:
    """A timer start for scope tracing."""
    return time.perf_counter()
