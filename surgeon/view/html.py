"""A self-contained HTML page drawing graph views: inline CSS, SVG and JS, no network at all.

The page embeds the views as JSON and lays each graph out in the browser (longest-path layers,
barycentre ordering within a layer), so one file can hold every scope of a model and stay small.
A Content-Security-Policy forbids any external load, so a page that tried one would fail loudly.
"""

from __future__ import annotations

import html
import json
import re

from surgeon.view.model import GraphView, pass_colours

_CSS = """
:root { font: 13px/1.4 system-ui, sans-serif; color: #1d2330; background: #fafbfc; }
body { margin: 0; }
header { display: flex; gap: 16px; align-items: center; padding: 10px 16px; border-bottom: 1px solid #d8dde5; }
h1 { font-size: 16px; margin: 0; }
h2 { font-size: 14px; margin: 0 0 2px; }
main { display: grid; grid-template-columns: 1fr 300px; height: calc(100vh - 50px); }
#views { overflow: auto; padding: 12px 16px; }
#detail { border-left: 1px solid #d8dde5; padding: 12px; overflow: auto; background: #fff; }
#detail dt { font-weight: 600; margin-top: 6px; }
#detail dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
.note, .hint { color: #5b6475; margin: 0 0 6px; }
.legend { display: flex; gap: 12px; flex-wrap: wrap; margin: 4px 0 8px; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #8a93a3; border-radius: 3px;
          vertical-align: -2px; margin-right: 4px; }
.node { cursor: pointer; }
.node rect { stroke: #8a93a3; stroke-width: 1; }
.node:hover rect, .node[data-selected] rect { stroke: #1d2330; stroke-width: 2.2; }
.node text { text-anchor: middle; font-size: 11px; pointer-events: none; }
.node text.sub { fill: #5b6475; font-size: 10px; }
.edge { fill: none; stroke: #9aa3b2; stroke-width: 1.2; }
marker path { fill: #9aa3b2; }
#errors { color: #b00020; padding: 8px 16px; }
"""

# Registered before the renderer so an exception anywhere in it is recorded in the DOM as well as in the
# console: a headless check can read either. It never calls preventDefault, so the console still logs it.
_ERROR_HOOK = """
window.addEventListener("error", function (event) {
  document.body.setAttribute("data-status", "error");
  const box = document.getElementById("errors");
  box.hidden = false;
  box.textContent += (event.message || String(event.error)) + "\\n";
});
"""

_SCRIPT = r"""
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const ROW_H = 36, ROW_GAP = 40, COL_GAP = 18, CHAR_W = 6.6, PAD = 16;
  const data = JSON.parse(document.getElementById("surgeon-data").textContent);

  function svgEl(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    parent.appendChild(e);
    return e;
  }
  function htmlEl(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;  // textContent, never innerHTML: labels are data
    parent.appendChild(e);
    return e;
  }
  const colour = (n) => data.colours[n.created_by || "original"] || "#ffffff";
  // Second line: the module class, else the function when the name does not already say it, else the shape.
  const subtitle = (n) => {
    if (n.module_class) return n.module_class;
    const short = String(n.target).split(".").pop();
    return n.label.startsWith(short) ? n.detail || n.op : short;
  };

  // Longest-path layering over a Kahn order: each node sits one row below its deepest input.
  function layering(view) {
    const ids = view.nodes.map((n) => n.id);
    const preds = new Map(ids.map((id) => [id, []])), succs = new Map(ids.map((id) => [id, []]));
    for (const [a, b] of view.edges) {
      if (preds.has(a) && preds.has(b)) { preds.get(b).push(a); succs.get(a).push(b); }
    }
    const indeg = new Map(ids.map((id) => [id, preds.get(id).length]));
    const queue = ids.filter((id) => indeg.get(id) === 0), layer = new Map();
    while (queue.length) {
      const id = queue.shift();
      layer.set(id, Math.max(0, ...preds.get(id).map((p) => layer.get(p) + 1)));
      for (const s of succs.get(id)) {
        indeg.set(s, indeg.get(s) - 1);
        if (indeg.get(s) === 0) queue.push(s);
      }
    }
    for (const id of ids) if (!layer.has(id)) layer.set(id, 0);  // only reachable on a cycle
    // Constants (get_attr) would all land in row 0; place them just above their first user instead.
    for (const n of view.nodes) {
      if (n.op === "get_attr" && succs.get(n.id).length) {
        layer.set(n.id, Math.max(0, Math.min(...succs.get(n.id).map((s) => layer.get(s))) - 1));
      }
    }
    return { preds, succs, layer };
  }

  // Barycentre ordering: sweeps down and up, sorting each row by its neighbours' mean relative position.
  function orderRows(view, g) {
    const rows = [];
    for (const n of view.nodes) (rows[g.layer.get(n.id)] ||= []).push(n.id);
    for (let i = 0; i < rows.length; i++) rows[i] ||= [];
    const pos = new Map();
    const place = (row) => row.forEach((id, i) => pos.set(id, (i + 0.5) / row.length));
    rows.forEach(place);
    const sweep = (row, nbrs) => {
      const bary = new Map(row.map((id) => {
        const ns = nbrs.get(id);
        return [id, ns.length ? ns.reduce((s, n) => s + pos.get(n), 0) / ns.length : pos.get(id)];
      }));
      row.sort((a, b) => bary.get(a) - bary.get(b));
      place(row);
    };
    for (let it = 0; it < 4; it++) {
      for (let l = 1; l < rows.length; l++) sweep(rows[l], g.preds);
      for (let l = rows.length - 2; l >= 0; l--) sweep(rows[l], g.succs);
    }
    return rows;
  }

  function layout(view) {
    const g = layering(view), rows = orderRows(view, g);
    const byId = new Map(view.nodes.map((n) => [n.id, n]));
    const w = (id) => Math.max(56, CHAR_W * Math.max(id.length, subtitle(byId.get(id)).length) + 16);
    const rowWidths = rows.map((r) => r.reduce((s, id) => s + w(id), 0) + COL_GAP * Math.max(0, r.length - 1));
    const inner = Math.max(200, ...rowWidths), box = new Map();
    rows.forEach((row, l) => {
      let x = PAD + (inner - rowWidths[l]) / 2;
      for (const id of row) { box.set(id, { x, y: PAD + l * (ROW_H + ROW_GAP), w: w(id) }); x += w(id) + COL_GAP; }
    });
    return { box, width: inner + 2 * PAD, height: 2 * PAD + rows.length * (ROW_H + ROW_GAP) - ROW_GAP };
  }

  function legend(view, parent) {
    const box = htmlEl("div", { class: "legend" }, parent);
    for (const name of ["original", ...new Set(view.nodes.map((n) => n.created_by).filter(Boolean))]) {
      const item = htmlEl("span", { class: "legend-item", "data-pass": name }, box);
      htmlEl("span", { class: "swatch" }, item).style.background = data.colours[name];
      item.append(name === "original" ? "original" : "created by " + name);
    }
  }

  function showDetail(n, view, g) {
    for (const e of document.querySelectorAll(".node[data-selected]")) e.removeAttribute("data-selected");
    g.setAttribute("data-selected", "");
    const panel = document.getElementById("detail");
    panel.replaceChildren();
    htmlEl("h2", {}, panel, n.label);
    const dl = htmlEl("dl", {}, panel);
    const ins = view.edges.filter((e) => e[1] === n.id).map((e) => e[0]);
    const outs = view.edges.filter((e) => e[0] === n.id).map((e) => e[1]);
    const rows = [["op", n.op], ["target", n.target], ["class", n.module_class], ["detail", n.detail],
      ["created by", n.created_by || "original"], ["inputs", ins.join(", ")], ["users", outs.join(", ")]];
    for (const [k, v] of rows) if (v) { htmlEl("dt", {}, dl, k); htmlEl("dd", {}, dl, v); }
  }

  function drawView(view, index, parent) {
    const section = htmlEl("section", { class: "view", "data-view": index }, parent);
    htmlEl("h2", {}, section, view.title);
    if (view.note) htmlEl("p", { class: "note" }, section, view.note);
    legend(view, section);
    if (!view.nodes.length) return section;
    const L = layout(view);
    const svg = svgEl("svg", { width: L.width, height: L.height, viewBox: `0 0 ${L.width} ${L.height}` }, section);
    const marker = svgEl("marker", { id: "arrow" + index, viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto" }, svgEl("defs", {}, svg));
    svgEl("path", { d: "M0,0 L10,5 L0,10 z" }, marker);
    const edges = svgEl("g", { class: "edges" }, svg), nodes = svgEl("g", { class: "nodes" }, svg);
    for (const [a, b] of view.edges) {
      const s = L.box.get(a), t = L.box.get(b);
      if (!s || !t) continue;
      const x1 = s.x + s.w / 2, y1 = s.y + ROW_H, x2 = t.x + t.w / 2, y2 = t.y, my = (y1 + y2) / 2;
      svgEl("path", { class: "edge", "data-from": a, "data-to": b, "marker-end": `url(#arrow${index})`,
        d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}` }, edges);
    }
    for (const n of view.nodes) {
      const b = L.box.get(n.id);
      const g = svgEl("g", { class: "node", "data-id": n.id, transform: `translate(${b.x},${b.y})` }, nodes);
      svgEl("title", {}, g).textContent = [n.label, n.op + " " + n.target, n.detail,
        n.created_by ? "created by " + n.created_by : ""].filter(Boolean).join("\n");
      const round = n.op === "placeholder" || n.op === "output" ? ROW_H / 2 : 5;
      svgEl("rect", { width: b.w, height: ROW_H, rx: round, fill: colour(n) }, g);
      svgEl("text", { class: "label", x: b.w / 2, y: 15 }, g).textContent = n.label;
      svgEl("text", { class: "sub", x: b.w / 2, y: 28 }, g).textContent = subtitle(n);
      g.addEventListener("click", () => showDetail(n, view, g));
    }
    return section;
  }

  const root = document.getElementById("views");
  const sections = data.views.map((view, i) => drawView(view, i, root));
  const select = document.getElementById("scope");
  if (sections.length > 1) {
    data.views.forEach((view, i) => htmlEl("option", { value: i }, select, view.title));
    const show = () => sections.forEach((s, i) => { s.hidden = String(i) !== select.value; });
    select.addEventListener("change", show);
    select.hidden = false;
    show();
  }
  document.body.setAttribute("data-status", "ok");
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<link rel="icon" href="data:,">
<title>@TITLE@</title>
<style>@CSS@</style>
</head>
<body data-status="loading">
<header><h1>@TITLE@</h1><select id="scope" aria-label="scope" hidden></select></header>
<main><div id="views"></div><aside id="detail"><p class="hint">Click a node to see its details.</p></aside></main>
<pre id="errors" hidden></pre>
<script type="application/json" id="surgeon-data">@DATA@</script>
<script>@HOOK@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""


def graph_html(views: list[GraphView], title: str) -> str:
    """One self-contained HTML page drawing ``views``, with a scope selector when there are several."""
    data = {"title": title, "colours": pass_colours(views), "views": [v.to_dict() for v in views]}
    parts = {
        "TITLE": html.escape(title),
        "CSS": _CSS,
        "DATA": json_for_script(data),
        "HOOK": _ERROR_HOOK,
        "SCRIPT": _SCRIPT,
    }
    # One substitution pass, so text inside the data can never be mistaken for a placeholder.
    return re.sub(r"@(TITLE|CSS|DATA|HOOK|SCRIPT)@", lambda m: parts[m.group(1)], _PAGE)


def json_for_script(value: object) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` become ``\\u`` escapes.

    Those characters only occur inside JSON strings, where the escapes decode to the same text, so
    ``</script>`` or ``<!--`` in a label can neither close the element nor open a comment.
    """
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
