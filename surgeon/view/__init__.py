"""Drawing captured graphs: a small view IR and text, Graphviz DOT and self-contained HTML renderers.

Core code: it reads ``torch.fx`` graphs and never imports ``surgeon.passes`` or ``surgeon.cli``.
Nodes a pass created (``node.meta["surgeon_pass"]``, or a module with a ``surgeon_pass`` attribute)
are coloured by that pass in every rendering::

    views = scope_views(surgeon.capture(model))
    Path("graphs.html").write_text(graph_html(views, "tiny-llama"))
"""

from __future__ import annotations

from surgeon.view.dot import graph_dot
from surgeon.view.html import graph_html
from surgeon.view.model import GraphView, NodeView, graph_view, pass_colours, scope_views
from surgeon.view.text import graph_diff_text, graph_text

__all__ = [
    "GraphView",
    "NodeView",
    "graph_diff_text",
    "graph_dot",
    "graph_html",
    "graph_text",
    "graph_view",
    "pass_colours",
    "scope_views",
]
