"""Plain-text renderings of graph views: a node table, and a diff between two views of one scope."""

from __future__ import annotations

from surgeon.view.model import GraphView, NodeView

_COLUMNS = ("name", "op", "target", "detail", "inputs")


def graph_text(view: GraphView) -> str:
    """One aligned line per node: ``name  op  target  detail  inputs  [created by X]``."""
    lines = [view.title]
    if view.note:
        lines.append(view.note)
    if not view.nodes:
        lines.append("(no nodes)")
        return "\n".join(lines)
    rows = [_COLUMNS] + [(n.id, n.op, n.target, n.detail, _inputs(view, n.id)) for n in view.nodes]
    tags = [""] + [f"  [created by {n.created_by}]" if n.created_by else "" for n in view.nodes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row, tag in zip(rows, tags):
        lines.append(("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + tag))
    return "\n".join(lines)


def graph_diff_text(before: GraphView, after: GraphView) -> str:
    """What changed from ``before`` to ``after``: ``-`` removed, ``+`` added, ``~`` changed nodes.

    Nodes are aligned by name first, then leftovers by ``(op, target)`` in graph order, so a node fx
    renamed (``mul`` → ``mul_1``) is not reported as removed and re-added. A node is changed when its
    target, module class or inputs (mapped through the alignment) differ.
    """
    pairs = _align(before, after)
    removed = [n for n in before.nodes if n.id not in pairs]
    matched_after = set(pairs.values())
    added = [n for n in after.nodes if n.id not in matched_after]
    changed: list[str] = []
    for old in before.nodes:
        if old.id not in pairs:
            continue
        new = after.node(pairs[old.id])
        notes = _changes(old, new, [pairs.get(i, f"{i} (removed)") for i in before.inputs(old.id)],
                         after.inputs(new.id))
        if notes:
            changed.append(f"~ {new.id}  " + "; ".join(notes))
    head = f"{before.title} → {after.title}: {len(removed)} removed, {len(added)} added, {len(changed)} changed"
    lines = [head]
    lines += [f"- {_summary(n)}" for n in removed]
    lines += [f"+ {_summary(n)}" for n in added]
    lines += changed
    if len(lines) == 1:
        lines.append("(no changes)")
    return "\n".join(lines)


def _inputs(view: GraphView, node_id: str) -> str:
    inputs = view.inputs(node_id)
    return "← " + ", ".join(inputs) if inputs else ""


def _align(before: GraphView, after: GraphView) -> dict[str, str]:
    """before id → after id for nodes that are the same node in both views."""
    after_ids = {n.id for n in after.nodes}
    pairs = {n.id: n.id for n in before.nodes if n.id in after_ids}
    taken = set(pairs.values())
    # Leftovers are paired in graph order per (op, target), so the k-th unmatched `mul` pairs with the k-th.
    free: dict[tuple[str, str], list[str]] = {}
    for n in after.nodes:
        if n.id not in taken:
            free.setdefault((n.op, n.target), []).append(n.id)
    for n in before.nodes:
        if n.id not in pairs and free.get((n.op, n.target)):
            pairs[n.id] = free[(n.op, n.target)].pop(0)
    return pairs


def _changes(old: NodeView, new: NodeView, old_inputs: list[str], new_inputs: list[str]) -> list[str]:
    notes = []
    if old.id != new.id:
        notes.append(f"renamed from {old.id}")
    if old.op != new.op or old.target != new.target:
        notes.append(f"target: {old.op} {old.target} → {new.op} {new.target}")
    if old.module_class != new.module_class:
        notes.append(f"class: {old.module_class} → {new.module_class}")
    if old_inputs != new_inputs:
        notes.append(f"inputs: {', '.join(old_inputs) or '-'} → {', '.join(new_inputs) or '-'}")
    if new.created_by and new.created_by != old.created_by:
        notes.append(f"[created by {new.created_by}]")
    # A rename alone is fx bookkeeping, not a change worth a line.
    return notes if any(not n.startswith("renamed") for n in notes) else []


def _summary(node: NodeView) -> str:
    parts = [node.id, node.op, node.target, node.detail]
    tag = f"  [created by {node.created_by}]" if node.created_by else ""
    return "  ".join(p for p in parts if p) + tag
