"""A small drawing IR for fx graphs: what the text, DOT and HTML renderers draw.

Renderers never touch ``torch.fx`` themselves: :func:`graph_view` reads a ``GraphModule`` once into plain
dataclasses (names, ops, targets, module classes, shapes, which pass created what), so every output
format shows the same facts and tests can build views by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

if TYPE_CHECKING:
    from surgeon.capture import Capture

ORIGINAL = "original"
"""Legend name for nodes no pass created."""

ORIGINAL_COLOUR = "#eef1f5"
# Light fills so black labels stay readable; assigned to passes in order of first appearance.
PASS_PALETTE = (
    "#f9c97c", "#8fd9a8", "#8ec5ee", "#f4a3a0", "#c9a7e4",
    "#7fd6c8", "#f3e07a", "#e8a97f", "#b7c4d1", "#e2b6d9",
)


@dataclass(frozen=True)
class NodeView:
    """One graph node as drawn: ``id`` is the fx node name (unique within its graph).

    ``detail`` is a one-line summary (module class, output shape and dtype); ``created_by`` names the
    pass that created the node or its module, None for original nodes.
    """

    id: str
    label: str
    op: str
    target: str
    detail: str = ""
    created_by: str | None = None
    module_class: str | None = None


@dataclass
class GraphView:
    """A graph ready to draw: nodes in graph (topological) order and ``(source id, target id)`` edges."""

    title: str
    nodes: list[NodeView]
    edges: list[tuple[str, str]]
    note: str = ""
    _index: dict[str, NodeView] = field(default_factory=dict, init=False, repr=False, compare=False)

    def node(self, node_id: str) -> NodeView:
        """The node with id ``node_id`` (KeyError when absent)."""
        if len(self._index) != len(self.nodes):
            self._index = {n.id: n for n in self.nodes}
        return self._index[node_id]

    def inputs(self, node_id: str) -> list[str]:
        """Ids of the nodes feeding ``node_id``, in argument order."""
        return [a for a, b in self.edges if b == node_id]

    def users(self, node_id: str) -> list[str]:
        """Ids of the nodes that use ``node_id``."""
        return [b for a, b in self.edges if a == node_id]

    def passes(self) -> list[str]:
        """Names of the passes that created nodes here, in order of first appearance."""
        return list(dict.fromkeys(n.created_by for n in self.nodes if n.created_by))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the HTML page embeds)."""
        return {
            "title": self.title,
            "note": self.note,
            "nodes": [asdict(n) for n in self.nodes],
            "edges": [list(e) for e in self.edges],
        }


def pass_colours(views: Iterable[GraphView]) -> dict[str, str]:
    """Fill colour per legend entry: ``ORIGINAL`` plus every pass seen in ``views``, stable by order."""
    colours = {ORIGINAL: ORIGINAL_COLOUR}
    for view in views:
        for name in view.passes():
            if name not in colours:
                colours[name] = PASS_PALETTE[(len(colours) - 1) % len(PASS_PALETTE)]
    return colours


def graph_view(gm: fx.GraphModule, title: str, root: nn.Module | None = None) -> GraphView:
    """Read ``gm`` into a :class:`GraphView`.

    ``root`` is the scope's module: ``call_module`` targets are looked up there first (passes swap
    modules into the model tree in place), then in ``gm`` itself.
    """
    nodes: list[NodeView] = []
    edges: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        module = _module(node, root, gm) if node.op == "call_module" else None
        module_class = type(module).__name__ if module is not None else None
        created_by = node.meta.get("surgeon_pass") or getattr(module, "surgeon_pass", None)
        detail = " · ".join(p for p in (module_class, _shape_text(node.meta.get("tensor_meta"))) if p)
        nodes.append(NodeView(
            id=node.name,
            label=node.name,
            op=node.op,
            target=target_text(node),
            detail=detail,
            created_by=str(created_by) if created_by else None,
            module_class=module_class,
        ))
        edges.extend((inp.name, node.name) for inp in node.all_input_nodes)
    return GraphView(title=title, nodes=nodes, edges=edges)


def scope_views(capture: Capture) -> list[GraphView]:
    """One view per scope of ``capture``; a scope without a graph becomes an empty view whose note says why."""
    views = []
    for path, scope in capture.scopes.items():
        title = path or "<model>"
        count = len(scope.instances)
        note = f"{scope.module_class} · {count} instance{'s' if count != 1 else ''}"
        if scope.graph_module is None:
            views.append(GraphView(title, [], [], note=f"{note} · capture failed: {scope.failure}"))
            continue
        view = graph_view(scope.graph_module, title, root=capture.model.get_submodule(path))
        view.note = note
        views.append(view)
    return views


def target_text(node: fx.Node) -> str:
    """A readable target: qualified function names (``operator.mul``), method names, module paths."""
    target = node.target
    if callable(target):
        try:
            name = fx.node._get_qualified_name(target)
            # Builtins report the C module (`_operator.mul`); the public module name reads better.
            return name.replace("_operator.", "operator.", 1) if name.startswith("_operator.") else name
        except Exception:  # noqa: BLE001 - some builtins have no importable name; any label will do
            return getattr(target, "__name__", repr(target))
    return str(target)


def _module(node: fx.Node, root: nn.Module | None, gm: fx.GraphModule) -> nn.Module | None:
    for owner in (root, gm):
        if owner is None:
            continue
        try:
            return owner.get_submodule(str(node.target))
        except AttributeError:
            continue
    return None


def _shape_text(meta: Any) -> str:
    """``[2, 8, 64] float32`` for a tensor; tuples, lists and dicts of tensors recursively."""
    # TensorMetadata is a NamedTuple, so it must be recognised before the generic tuple case.
    if isinstance(meta, TensorMetadata):
        dtype = str(meta.dtype).removeprefix("torch.")
        return f"[{', '.join(str(d) for d in meta.shape)}] {dtype}"
    if isinstance(meta, (tuple, list)):
        parts = [_shape_text(m) for m in meta]
        return f"({', '.join(p for p in parts if p)})" if any(parts) else ""
    if isinstance(meta, dict):
        parts = [f"{k}: {_shape_text(v)}" for k, v in meta.items() if _shape_text(v)]
        return "{" + ", ".join(parts) + "}" if parts else ""
    return ""
