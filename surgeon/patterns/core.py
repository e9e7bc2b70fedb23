"""A small declarative pattern language over fx graphs.

A :class:`Pattern` is data: named node specs and edges ``(producer, consumer)``. A spec states a node
kind (a module of some type or structure, a function, a method, or anything), an optional path glob for
modules, and optional shape/dtype predicates read from the shapes capture propagated. Fan-out is
written as one producer with several edges (``x → gate``, ``x → up``). ``closed`` names captures whose
every user must lie inside the match (an MLP's hidden activation may not leak elsewhere).

Matching is subgraph monomorphism (networkx VF2) over the graph's data-flow edges, so argument order
does not matter (``a * b`` matches ``b * a``). ``find`` returns :class:`Match` objects with the
captured nodes, deduplicated over pattern automorphisms.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import networkx as nx
import torch
import torch.fx as fx
from networkx.algorithms import isomorphism
from torch import nn


@dataclass(frozen=True)
class MatchContext:
    """What predicates may look at: the scope's root module (first instance) and its path."""

    root: nn.Module
    path: str = ""
    capture: Any = None  # surgeon.capture.Capture, for specs that look into child scopes

    def module(self, node: fx.Node) -> nn.Module:
        """The module a ``call_module`` node calls."""
        return self.root.get_submodule(node.target)


ModulePredicate = Callable[[nn.Module], bool]


@dataclass(frozen=True)
class NodeSpec:
    """What one pattern node accepts.

    ``op`` is an fx opcode or "any"; ``targets`` the accepted functions/method names; ``module`` a
    predicate on the called module (``call_module`` only); ``path`` a glob on the module's relative path;
    ``shape``/``dtype`` predicates on the node's propagated output metadata; ``where`` a free predicate
    ``(node, ctx) -> bool`` for anything else.
    """

    op: str = "any"
    targets: tuple = ()
    module: ModulePredicate | None = None
    path: str | None = None
    shape: Callable[[torch.Size], bool] | None = None
    dtype: Callable[[torch.dtype], bool] | None = None
    where: Callable[[fx.Node, MatchContext], bool] | None = None
    label: str = ""

    def accepts(self, node: fx.Node, ctx: MatchContext) -> bool:
        """True when ``node`` satisfies every part of this spec."""
        if self.op != "any" and node.op != self.op:
            return False
        if node.op == "output":
            return False
        if self.targets and node.target not in self.targets:
            return False
        if self.module is not None or self.path is not None:
            if node.op != "call_module":
                return False
            if self.path is not None and not fnmatch.fnmatchcase(node.target, self.path):
                return False
            if self.module is not None and not self.module(ctx.module(node)):
                return False
        meta = node.meta.get("tensor_meta")
        if self.shape is not None and (meta is None or not hasattr(meta, "shape") or not self.shape(meta.shape)):
            return False
        if self.dtype is not None and (meta is None or not hasattr(meta, "dtype") or not self.dtype(meta.dtype)):
            return False
        return self.where is None or bool(self.where(node, ctx))

    def __or__(self, other: "NodeSpec") -> "NodeSpec":
        return either(self, other)


def either(*specs: NodeSpec) -> NodeSpec:
    """A spec accepting a node that any of ``specs`` accepts."""
    return NodeSpec(where=lambda node, ctx: any(s.accepts(node, ctx) for s in specs),
                    label="|".join(s.label for s in specs))


def module(predicate: ModulePredicate | type | tuple[type, ...] | None = None, *, path: str | None = None,
           **kw) -> NodeSpec:
    """A ``call_module`` node whose module is of a type, or satisfies a predicate."""
    if isinstance(predicate, (type, tuple)):
        types = predicate
        predicate = lambda m: isinstance(m, types)  # noqa: E731
    return NodeSpec(op="call_module", module=predicate or (lambda m: True), path=path,
                    label=kw.pop("label", "module"), **kw)


def function(*fns: Callable, **kw) -> NodeSpec:
    """A ``call_function`` node calling one of ``fns``."""
    return NodeSpec(op="call_function", targets=tuple(fns), label=kw.pop("label", "function"), **kw)


def method(*names: str, **kw) -> NodeSpec:
    """A ``call_method`` node calling one of the method ``names``."""
    return NodeSpec(op="call_method", targets=tuple(names), label=kw.pop("label", "method"), **kw)


def anything(**kw) -> NodeSpec:
    """Any computing node or graph input (not an output)."""
    return NodeSpec(label="input", **kw)


@dataclass(frozen=True)
class Pattern:
    """Named node specs, data-flow edges between them, and captures whose users must stay inside."""

    name: str
    nodes: Mapping[str, NodeSpec]
    edges: tuple[tuple[str, str], ...]
    closed: tuple[str, ...] = ()

    def __post_init__(self):
        for a, b in self.edges:
            for end in (a, b):
                if end not in self.nodes:
                    raise ValueError(f"pattern {self.name!r}: edge end {end!r} is not a pattern node")
        for name in self.closed:
            if name not in self.nodes:
                raise ValueError(f"pattern {self.name!r}: closed node {name!r} is not a pattern node")


@dataclass(frozen=True)
class Match:
    """One occurrence of a pattern: captured nodes by name, in the scope at ``scope_path``."""

    pattern: str
    scope_path: str
    nodes: Mapping[str, fx.Node] = field(hash=False)

    def target(self, name: str) -> str:
        """The module path (relative to the scope) that capture ``name`` calls."""
        node = self.nodes[name]
        if node.op != "call_module":
            raise ValueError(f"capture {name!r} of {self.pattern} is a {node.op}, not a module call")
        return node.target

    def key(self) -> frozenset:
        """Identity of the match regardless of pattern automorphisms."""
        return frozenset((name, node.name) for name, node in self.nodes.items())


def graph_to_digraph(graph: fx.Graph) -> nx.DiGraph:
    """The data-flow graph: an edge from every node to each of its users."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node.name, node=node)
    for node in graph.nodes:
        for user in node.users:
            g.add_edge(node.name, user.name)
    return g


def find(pattern: Pattern, graph: fx.Graph, ctx: MatchContext) -> list[Match]:
    """Every occurrence of ``pattern`` in ``graph`` (deduplicated, in graph order)."""
    target = graph_to_digraph(graph)
    query = nx.DiGraph()
    for name, spec in pattern.nodes.items():
        query.add_node(name, spec=spec)
    query.add_edges_from(pattern.edges)

    def node_match(graph_attrs, query_attrs) -> bool:
        return query_attrs["spec"].accepts(graph_attrs["node"], ctx)

    matcher = isomorphism.DiGraphMatcher(target, query, node_match=node_match)
    seen: set = set()
    found: list[Match] = []
    for mapping in matcher.subgraph_monomorphisms_iter():
        captured = {q: target.nodes[g]["node"] for g, q in mapping.items()}
        if not _closed_ok(pattern, captured):
            continue
        match = Match(pattern.name, ctx.path, captured)
        if match.key() not in seen:
            seen.add(match.key())
            found.append(match)
    order = {node: i for i, node in enumerate(graph.nodes)}
    found.sort(key=lambda m: max(order[n] for n in m.nodes.values()))
    return found


def _closed_ok(pattern: Pattern, captured: Mapping[str, fx.Node]) -> bool:
    inside = set(captured.values())
    return all(set(captured[name].users) <= inside for name in pattern.closed)


def find_all(patterns: Iterable[Pattern], graph: fx.Graph, ctx: MatchContext) -> list[Match]:
    """Occurrences of several patterns; a node claimed by an earlier pattern is not matched again."""
    claimed: set[fx.Node] = set()
    out = []
    for pattern in patterns:
        for match in find(pattern, graph, ctx):
            core = {n for n in match.nodes.values() if n.op == "call_module"}
            if core & claimed:
                continue
            claimed |= core
            out.append(match)
    return out
