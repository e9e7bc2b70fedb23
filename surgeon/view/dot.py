"""Graphviz DOT rendering of a graph view (``dot -Tsvg`` draws it; no graphviz needed to produce it)."""

from __future__ import annotations

from surgeon.view.model import ORIGINAL, GraphView, pass_colours

# Placeholders and outputs are the scope's interface; a different shape makes them easy to spot.
_SHAPES = {"placeholder": "ellipse", "output": "ellipse", "get_attr": "note"}


def graph_dot(view: GraphView) -> str:
    """A ``digraph`` with one box per node, filled by the pass that created it, and a legend cluster."""
    colours = pass_colours([view])
    lines = [
        f"digraph {quote(view.title)} {{",
        "  rankdir=TB;",
        f"  label={quote(_title(view))}; labelloc=t; fontname=Helvetica;",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];',
        "  edge [arrowsize=0.6];",
    ]
    for node in view.nodes:
        label = "\n".join(p for p in (node.label, node.target if node.target != node.label else "", node.detail) if p)
        attrs = {
            "label": label,
            "fillcolor": colours[node.created_by or ORIGINAL],
            "shape": _SHAPES.get(node.op, "box"),
            "tooltip": f"{node.op} {node.target}" + (f" [created by {node.created_by}]" if node.created_by else ""),
        }
        lines.append(f"  {quote(node.id)} [{_attrs(attrs)}];")
    for source, target in view.edges:
        lines.append(f"  {quote(source)} -> {quote(target)};")
    lines += _legend(colours)
    lines.append("}")
    return "\n".join(lines) + "\n"


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as DOT's centred ``\\n``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{escaped}"'


def _title(view: GraphView) -> str:
    return f"{view.title}\n{view.note}" if view.note else view.title


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{key}={quote(value)}" for key, value in attrs.items())


def _legend(colours: dict[str, str]) -> list[str]:
    """A cluster of swatches; ids contain '/' which fx node names never do, so they cannot collide."""
    lines = ["  subgraph cluster_legend {", '    label="legend"; fontsize=10; style=dashed;']
    for name, colour in colours.items():
        lines.append(f"    {quote('legend/' + name)} [{_attrs({'label': name, 'fillcolor': colour})}];")
    lines.append("  }")
    return lines
