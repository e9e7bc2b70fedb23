"""surgeon.view: the view IR, text table and diff, DOT, and the HTML page rendered by a real headless chromium."""

from __future__ import annotations

import copy
import json
import operator
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from torch import nn

import surgeon
from surgeon.view import (
    GraphView,
    NodeView,
    graph_diff_text,
    graph_dot,
    graph_html,
    graph_text,
    graph_view,
    pass_colours,
    scope_views,
)

MLP = "model.layers.0.mlp"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT_S = 60


class ScaledLinear(nn.Linear):
    """A Linear subclass standing in for a module a pass swapped in."""

    surgeon_pass = "swap"


@pytest.fixture(scope="module")
def llama():
    model = surgeon.load_model("tiny-llama")
    return model, surgeon.capture(model)


@pytest.fixture(scope="module")
def before(llama):
    model, cap = llama
    return graph_view(cap.scopes[MLP].graph_module, MLP, root=model.get_submodule(MLP))


@pytest.fixture(scope="module")
def after(llama):
    """The MLP scope after hand-made surgery: act_fn erased, a scale node inserted, up_proj swapped."""
    model, cap = llama
    root = copy.deepcopy(model.get_submodule(MLP))
    root.up_proj = ScaledLinear(root.up_proj.in_features, root.up_proj.out_features)
    gm = copy.deepcopy(cap.scopes[MLP].graph_module)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    with graph.inserting_after(nodes["mul"]):
        scale = graph.call_function(operator.mul, (nodes["mul"], 2.0))
    scale.meta["surgeon_pass"] = "demo"
    nodes["mul"].replace_all_uses_with(scale)
    scale.args = (nodes["mul"], 2.0)  # replace_all_uses_with rewired scale's own input too
    nodes["act_fn"].replace_all_uses_with(nodes["gate_proj"])
    graph.erase_node(nodes["act_fn"])
    graph.lint()
    gm.recompile()
    return graph_view(gm, f"{MLP} (after)", root=root)


# --- the view IR -----------------------------------------------------------------------------------------


def test_graph_view_reads_nodes_edges_classes_and_shapes(llama, before):
    _, cap = llama
    gm = cap.scopes[MLP].graph_module
    assert [n.id for n in before.nodes] == [n.name for n in gm.graph.nodes]
    gate = before.node("gate_proj")
    assert (gate.op, gate.target, gate.module_class) == ("call_module", "gate_proj", "Linear")
    assert gate.detail == "Linear · [2, 8, 128] float32"
    assert before.node("mul").target == "operator.mul"
    assert before.node("output").detail == "([2, 8, 64] float32)"
    assert set(before.edges) == {("x", "gate_proj"), ("gate_proj", "act_fn"), ("x", "up_proj"),
                                 ("act_fn", "mul"), ("up_proj", "mul"), ("mul", "down_proj"),
                                 ("down_proj", "output")}
    assert before.inputs("mul") == ["act_fn", "up_proj"]
    assert before.passes() == [] and all(n.created_by is None for n in before.nodes)


def test_created_by_comes_from_node_meta_and_module_attribute(after):
    assert after.node("mul_1").created_by == "demo"  # node.meta["surgeon_pass"]
    up = after.node("up_proj")
    assert (up.created_by, up.module_class) == ("swap", "ScaledLinear")  # module attribute, found in root
    assert after.node("gate_proj").created_by is None
    assert after.passes() == ["swap", "demo"]
    assert list(pass_colours([after])) == ["original", "swap", "demo"]


def test_scope_views_cover_every_scope_and_note_failures():
    model = surgeon.load_model("tiny-bert")
    cap = surgeon.capture(model)
    views = scope_views(cap)
    assert [v.title for v in views] == [p or "<model>" for p in cap.scopes]
    failed = [v for v, s in zip(views, cap.scopes.values()) if s.graph_module is None]
    assert failed, "tiny-bert has a known capture failure (embeddings)"
    assert all(not v.nodes and "capture failed" in v.note for v in failed)


# --- text ------------------------------------------------------------------------------------------------


def test_graph_text_has_one_aligned_line_per_node_with_inputs_and_creator(after):
    lines = graph_text(after).splitlines()
    assert lines[0] == after.title
    assert lines[1].split() == ["name", "op", "target", "detail", "inputs"]
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == [n.id for n in after.nodes]
    row = dict(zip([n.id for n in after.nodes], rows))
    assert row["mul_1"].endswith("← mul  [created by demo]")
    assert "← gate_proj, up_proj" in row["mul"] and "[created by" not in row["mul"]
    assert row["up_proj"].endswith("[created by swap]")
    # Aligned: every row's op column starts where the header's does.
    assert {r.index(n.op, len(n.id)) for r, n in zip(rows, after.nodes)} == {lines[1].index("op")}


def test_diff_shows_removed_added_and_changed_nodes(before, after):
    lines = graph_diff_text(before, after).splitlines()
    assert lines[0] == f"{MLP} → {MLP} (after): 1 removed, 1 added, 3 changed"
    assert lines[1].startswith("- act_fn  call_module  act_fn  SiLUActivation")
    assert lines[2] == "+ mul_1  call_function  operator.mul  [created by demo]"
    assert lines[3:] == [
        "~ up_proj  class: Linear → ScaledLinear; [created by swap]",
        "~ mul  inputs: act_fn (removed), up_proj → gate_proj, up_proj",
        "~ down_proj  inputs: mul → mul_1",
    ]
    assert graph_diff_text(before, before).splitlines()[1:] == ["(no changes)"]


def test_diff_aligns_renamed_nodes_by_op_and_target():
    def view(names):
        nodes = [NodeView("x", "x", "placeholder", "x")] + [
            NodeView(n, n, "call_function", "operator.add") for n in names]
        return GraphView("g", nodes, [("x", names[0]), (names[0], names[1])])

    # `add` became `add_5` (say, after a retrace): same op and target, same wiring, so nothing changed.
    assert graph_diff_text(view(["add", "add_1"]), view(["add_5", "add_1"])).endswith("(no changes)")
    # With another target too, it is a different node: removed, added, and its user rewired.
    changed = view(["add_5", "add_1"])
    changed.nodes[1] = NodeView("add_5", "add_5", "call_function", "operator.sub")
    assert graph_diff_text(view(["add", "add_1"]), changed).splitlines()[1:] == [
        "- add  call_function  operator.add",
        "+ add_5  call_function  operator.sub",
        "~ add_1  inputs: add (removed) → add_5",
    ]


# --- DOT -------------------------------------------------------------------------------------------------

_DOT_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _dot_skeleton(dot: str) -> str:
    """DOT with every quoted string removed: what is left must be punctuation and keywords only."""
    return _DOT_STRING.sub('""', dot)


def test_dot_is_balanced_and_names_every_node_and_edge(after):
    dot = graph_dot(after)
    skeleton = _dot_skeleton(dot)
    assert dot.startswith('digraph "') and dot.rstrip().endswith("}")
    assert skeleton.count("{") == skeleton.count("}") == 2  # the graph and the legend cluster
    assert skeleton.count("[") == skeleton.count("]") and '"' not in skeleton.replace('""', "")
    for node in after.nodes:
        assert re.search(rf'^  "{re.escape(node.id)}" \[label=', dot, re.M), node.id
    for source, target in after.edges:
        assert f'  "{source}" -> "{target}";' in dot
    colours = pass_colours([after])
    assert f'"mul_1" [label="mul_1\\noperator.mul", fillcolor="{colours["demo"]}"' in dot
    assert f'"legend/demo" [label="demo", fillcolor="{colours["demo"]}"]' in dot


def test_dot_escapes_quotes_backslashes_and_newlines():
    tricky = 'say "hi" \\ {x}\nline two'
    view = GraphView(tricky, [NodeView('n"1', tricky, "call_function", "f")], [])
    dot = graph_dot(view)
    skeleton = _dot_skeleton(dot)
    assert skeleton.count("{") == skeleton.count("}") and '"' not in skeleton.replace('""', "")
    assert '"n\\"1" [label="say \\"hi\\" \\\\ {x}\\nline two\\nf"' in dot


# --- HTML, statically ------------------------------------------------------------------------------------


def _embedded_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="surgeon-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_html_embeds_json_that_cannot_close_its_script_element():
    label = "</script><script>alert(1)</script><!-- & -->"
    view = GraphView("t", [NodeView("a", label, "call_function", "f")], [])
    page = graph_html([view], "<b>title</b>")
    assert page.count("</script>") == 3  # the data, the error hook and the renderer: nothing from the label
    assert "<!--" not in page and "<b>title</b>" not in page and "&lt;b&gt;title&lt;/b&gt;" in page
    assert _embedded_data(page)["views"][0]["nodes"][0]["label"] == label
    assert not re.search(r'<(?:script|link|img)[^>]+(?:src|href)="(?!data:)', page), "no external resources"


# --- HTML in a real headless browser ---------------------------------------------------------------------


class _DomNodes(HTMLParser):
    """Collects each ``<g class="node">`` (its view, data-id, <text> contents and rect fill) and <body> attributes."""

    def __init__(self):
        super().__init__()
        self.nodes: list[dict] = []
        self.body: dict[str, str | None] = {}
        self._view: int | None = None
        self._node: dict | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "section" and "data-view" in a:
            self._view = int(a["data-view"])
        elif tag == "g" and a.get("class") == "node":
            self._node = {"view": self._view, "id": a.get("data-id"), "texts": [], "fill": None}
            self.nodes.append(self._node)
        elif tag == "rect" and self._node is not None:
            self._node["fill"] = a.get("fill")
        elif tag == "text" and self._node is not None:
            self._text = []

    def handle_endtag(self, tag):
        if tag == "text" and self._node is not None and self._text is not None:
            self._node["texts"].append("".join(self._text))
            self._text = None
        elif tag == "g":
            self._node = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def console_messages(stderr: str) -> list[str]:
    """Page console lines from chromium's stderr log (``...:INFO:CONSOLE...] "message", source: ...``)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


def console_errors(stderr: str) -> list[str]:
    """Console lines that report an error: uncaught exceptions and messages mentioning an error."""
    return [line for line in console_messages(stderr) if re.search(r"error|uncaught", line, re.I)]


def _render(page: str, tmp_path: Path) -> tuple[str, str]:
    """Load ``page`` in headless chromium; returns (dumped DOM, stderr log)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` (CI installs it; this test never skips)")
    path = tmp_path / "view.html"
    path.write_text(page, encoding="utf-8")
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--dump-dom", path.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "<body" in done.stdout, f"chromium dumped no DOM:\n{done.stderr[-3000:]}"
    return done.stdout, done.stderr


def test_html_draws_every_node_in_headless_chromium(llama, after, tmp_path):
    _, cap = llama
    failed = GraphView("failed", [], [], note="capture failed: a reason")  # drawn as a note, no svg
    views = scope_views(cap) + [failed, after]
    dom, stderr = _render(graph_html(views, "tiny-llama"), tmp_path)

    # The page logs nothing, so any console line at all (error, CSP refusal, warning) is a failure.
    assert console_messages(stderr) == [], "\n".join(console_messages(stderr))
    parsed = _DomNodes()
    parsed.feed(dom)
    assert parsed.body.get("data-status") == "ok", dom[-2000:]

    expected = [(i, n.id, n.label) for i, v in enumerate(views) for n in v.nodes]
    drawn = [(n["view"], n["id"], n["texts"][0]) for n in parsed.nodes]
    assert drawn == expected
    assert dom.count('class="node"') == len(expected)
    assert dom.count('class="edge"') == sum(len(v.edges) for v in views)
    assert dom.count("<option") == len(views)  # the scope selector
    assert "capture failed: a reason" in dom

    colours = pass_colours(views)
    fills = {n["id"]: n["fill"] for n in parsed.nodes if n["view"] == len(views) - 1}
    assert fills["mul_1"] == colours["demo"] and fills["up_proj"] == colours["swap"]
    assert fills["gate_proj"] == colours["original"]
    assert 'data-pass="demo"' in dom and 'data-pass="swap"' in dom  # legend entries


@pytest.mark.parametrize("broken, uncaught", [
    ('throw new Error("deliberate failure");', True),
    ('console.error("deliberate failure");', False),
])
def test_headless_check_catches_a_broken_page(before, tmp_path, broken, uncaught):
    page = graph_html([before], "broken")
    marker = '"use strict";'
    assert page.count(marker) == 1
    dom, stderr = _render(page.replace(marker, marker + "\n" + broken), tmp_path)

    messages = console_messages(stderr)
    assert any("deliberate failure" in line for line in messages), stderr[-3000:]
    if uncaught:
        assert any("Uncaught Error: deliberate failure" in line for line in console_errors(stderr))
        parsed = _DomNodes()
        parsed.feed(dom)
        assert parsed.body.get("data-status") == "error" and parsed.nodes == []
