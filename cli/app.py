"""The ``surgeon`` command line: a thin typer app over the public API (parse, call, print)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console

import surgeon
from surgeon.capture import Capture
from surgeon.cli.errors import handle_errors
from surgeon.cli import render
from surgeon.errors import SurgeonError
from surgeon.pipeline.recipe import Recipe
from surgeon.pipeline.registry import PassContext, registered_passes

app = typer.Typer(
    name="surgeon",
    help="Model surgery for PyTorch: apply published architecture changes to a model you have, "
         "check what they did to the numbers, and save the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide enough for the report tables when output is not a terminal (rich would assume 80 columns).
console = Console(highlight=False, soft_wrap=True, width=None if Console().is_terminal else 120)


class Device(str, enum.Enum):
    """Where the model runs."""

    cpu = "cpu"
    cuda = "cuda"


class DType(str, enum.Enum):
    """Model parameter dtype."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class GraphFormat(str, enum.Enum):
    """How to show a graph."""

    text = "text"
    dot = "dot"
    html = "html"


class DiffFormat(str, enum.Enum):
    """How to show a diff."""

    text = "text"
    html = "html"


SOURCE_HELP = "A zoo name (see `surgeon inspect --help`), 'minilm', a local HF directory or a surgeon output."


def _load(source: str, device: Device = Device.cpu, dtype: DType = DType.float32, allow_pickle: bool = False):
    if device is Device.cuda and not torch.cuda.is_available():
        raise SurgeonError("--device cuda was given but no CUDA device is available", fix="Use --device cpu")
    with console.status(f"loading {source}"):
        model = surgeon.load_model(source, allow_pickle=allow_pickle)
    return model.to(device=device.value, dtype=getattr(torch, dtype.value))


def _write_text(text: str, out: Optional[Path]) -> None:
    if out is None:
        console.out(text, highlight=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)  # atomic: an earlier file is never half-overwritten
    console.print(f"wrote {out}")


@app.command()
@handle_errors
def apply(
    source: str = typer.Argument("tiny-llama", help=SOURCE_HELP),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe file (YAML or JSON)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (required unless --dry-run)."),
    calibration: Optional[Path] = typer.Option(None, help="Calibration data: a text file of lines, or .safetensors."),
    device: Device = typer.Option(Device.cpu, help="Device to run on."),
    dtype: DType = typer.Option(DType.float32, help="Parameter dtype."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what each step matches; write nothing."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier surgeon output at --out."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle checkpoints (they can run code)."),
    lower: bool = typer.Option(False, "--lower", help="End with the `lower` pass: layers → surgeon:: kernel ops."),
) -> None:
    """Apply a recipe to a model, certify each pass, and save the result."""
    steps = Recipe.from_file(recipe)
    if lower:
        from surgeon.passes.lower import Lower

        steps = Recipe([*steps, Lower()])
    if out is None and not dry_run:
        raise SurgeonError("--out is required", fix="Pass --out DIR, or --dry-run to only see the matches")
    if out is not None and not dry_run:
        from surgeon.persist.atomic import check_destination

        check_destination(out, force=force)  # fail before the work, not after it
    model = _load(source, device, dtype, allow_pickle)
    batches = None
    if calibration is not None:
        from surgeon.calibration import load_calibration

        batches = load_calibration(calibration, model)
    with console.status("capturing and applying passes") as status:
        def progress(rep):
            status.update(f"applied step {rep.step} ({rep.name}); continuing")
            console.print(f"  step {rep.step} [bold]{rep.name}[/]: {len(rep.matched)} matched, "
                          f"{len(rep.skipped)} skipped ({rep.seconds * 1000:.0f} ms)")

        surgeon.apply(model, steps, calibration=batches, certify=not dry_run, on_step=progress)
    reports = surgeon.report(model)
    if dry_run:
        for rep in reports:
            console.print(f"[bold]step {rep.step} {rep.name}[/] target={rep.target!r}")
            for path in rep.matched:
                console.print(f"  [green]match[/] {path}")
            for path, reason in rep.skipped:
                console.print(f"  [yellow]skip[/]  {path}: {reason}")
        console.print("dry run: nothing written")
        return
    console.print(render.pass_table(reports))
    with console.status(f"saving to {out}"):
        surgeon.save(model, out, force=force)
    console.print(f"saved to {out}")


@app.command()
@handle_errors
def inspect(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    scope: Optional[str] = typer.Option(None, help="Show one scope's graph (a module path; '' is the model)."),
    format: GraphFormat = typer.Option(GraphFormat.text, "--format", "-f", help="Graph format."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file instead of the terminal."),
    regions: bool = typer.Option(False, "--regions", help="List the Linear input groups and their producers."),
    stats: bool = typer.Option(False, "--stats", help="Activation statistics (outliers, kurtosis, QSUR) per group."),
    calibration: Optional[Path] = typer.Option(None, help="Batches for --stats: a text file of lines, or .safetensors."),
) -> None:
    """Show a model's scopes, targetable sites and capture failures, one scope's graph, or its regions/stats."""
    from surgeon.view import graph_dot, graph_html, graph_text, graph_view

    model = _load(source)
    cap = surgeon.capture(model)
    if regions or stats:
        _print_regions(model, cap, stats, calibration, out)
        return
    if scope is None:
        if format is not GraphFormat.text:
            views = [graph_view(s.graph_module, s.path or "<model>", model.get_submodule(s.path))
                     for s in cap.scopes.values() if s.ok]
            text = graph_html(views, f"surgeon inspect {source}") if format is GraphFormat.html else \
                "\n".join(graph_dot(v) for v in views)
            _write_text(text, out)
            return
        console.print(render.scope_table(cap))
        _print_sites(model, cap)
        failures = cap.failures()
        console.print("[bold]capture failures[/]" if failures else "no capture failures")
        for path, reason in failures:
            console.print(f"  {path or '<model>'}: {reason}")
        return
    found = cap.scope_at(scope)
    if found is None:
        known = ", ".join(repr(p) for p in list(cap.scopes)[:8])
        raise SurgeonError(f"no scope at {scope!r}", fix=f"Scopes are module paths such as {known}")
    if not found.ok:
        raise SurgeonError(f"scope {scope!r} was not captured: {found.failure}",
                           fix="Its parent scope shows it as a leaf; inspect that instead")
    from surgeon.rewrite import instance_graph_module

    view = graph_view(instance_graph_module(cap, scope), scope or "<model>", model.get_submodule(scope))
    render_fn = {GraphFormat.text: graph_text, GraphFormat.dot: graph_dot,
                 GraphFormat.html: lambda v: graph_html([v], f"surgeon inspect {source} {scope}")}[format]
    _write_text(render_fn(view), out)


def _print_regions(model, cap: Capture, with_stats: bool, calibration: Optional[Path], out: Optional[Path]) -> None:
    from surgeon.passes.equiv.report import regions_of, regions_text, stats_rows

    found = regions_of(model, cap)
    if not with_stats:
        _write_text(regions_text(found) + "\n", out)
        return
    if calibration is not None:
        from surgeon.calibration import load_calibration

        batches = load_calibration(calibration, model)
    else:
        batches = [surgeon.example_inputs(model)]
    rows = stats_rows(model, found, batches)
    lines = ["| first reader | width | producer | tokens | max/mean | channel max ratio | kurtosis | QSUR per dim |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.stats
        qsur = "n/a (tokens ≤ width)" if s["qsur_per_dim"] != s["qsur_per_dim"] else f"{s['qsur_per_dim']:.4f}"
        lines.append(f"| {r.group.readers[0]} | {r.group.width} | {r.group.producer_kind or 'online'} | {r.tokens} "
                     f"| {s['max_over_mean']:.1f} | {s['channel_max_ratio']:.1f} | {s['kurtosis']:.1f} | {qsur} |")
    _write_text("\n".join(lines) + "\n", out)


def _print_sites(model, cap: Capture) -> None:
    ctx = PassContext(model, lambda m, previous: cap)
    console.print("[bold]targetable sites[/] (paths a step's `target` selects)")
    for name, handler in registered_passes().items():
        if name.startswith("test_"):
            continue
        try:
            found = handler.find(ctx, handler.config_type())
        except SurgeonError as exc:
            console.print(f"  {name}: not applicable ({exc.what})")
            continue
        paths = [s.path for s in found.sites]
        shown = ", ".join(paths[:6]) + (f", … ({len(paths)} in all)" if len(paths) > 6 else "")
        console.print(f"  {name} ({handler.site_kind}): {shown or 'none'}")
        for path, reason in found.skipped[:3]:
            console.print(f"    [dim]not {path}: {reason}[/]")


@app.command()
@handle_errors
def diff(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe file (YAML or JSON)."),
    format: DiffFormat = typer.Option(DiffFormat.text, "--format", "-f", help="Diff format."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file instead of the terminal."),
) -> None:
    """Show each rewritten scope's graph before and after a recipe."""
    from surgeon.view import graph_diff_text, graph_html, graph_view

    steps = Recipe.from_file(recipe)
    model = _load(source)
    before_cap = surgeon.capture(model)
    before = {p: graph_view(s.graph_module, p or "<model>", model.get_submodule(p))
              for p, s in before_cap.scopes.items() if s.ok}
    surgeon.apply(model, steps)
    after_cap = surgeon.capture(model)
    changed = []
    for path, scope in after_cap.scopes.items():
        if not scope.ok or path not in before:
            continue
        view = graph_view(scope.graph_module, path or "<model>", model.get_submodule(path))
        text = graph_diff_text(before[path], view)
        if any(line[:1] in "+-~" for line in text.splitlines()):
            changed.append((path, before[path], view, text))
    if format is DiffFormat.html:
        views = []
        for path, old, new, _ in changed:
            old.title, new.title = f"{path or '<model>'} (before)", f"{path or '<model>'} (after)"
            views += [old, new]
        _write_text(graph_html(views, f"surgeon diff {source} {recipe.name}"), out)
        return
    text = "\n\n".join(f"== {path or '<model>'}\n{t}" for path, _, _, t in changed) or "no scope changed"
    _write_text(text, out)


@app.command()
@handle_errors
def passes(name: Optional[str] = typer.Argument(None, help="Show one pass in detail.")) -> None:
    """List the registered passes: options, defaults, guarantee and paper."""
    handlers = {k: v for k, v in registered_passes().items() if not k.startswith("test_")}
    if name is None:
        console.print(render.passes_table(handlers))
        return
    from surgeon.pipeline.registry import pass_named

    handler = pass_named(name)
    console.print(f"[bold]{handler.name}[/] — {handler.summary}")
    console.print(f"preserves: {handler.preserves}; sites: {handler.site_kind}; paper: {handler.paper}")
    console.print("options:")
    for line in render.options_text(handler).splitlines():
        console.print(f"  {line}")


@app.command()
@handle_errors
def verify(directory: Path = typer.Argument(..., help="A surgeon output directory.")) -> None:
    """Reload a saved output, check its hashes, rebuild its base and re-certify the guarantees."""
    result = surgeon.verify(directory)
    for check in result.checks:
        mark = "[green]ok[/]" if check.passed else "[red]FAILED[/]"
        console.print(f"{mark} {check.name}: {check.detail}")
    if not result.ok:
        raise SurgeonError("a declared guarantee does not hold for the saved model", where=str(directory),
                           fix="Re-run the recipe; if it persists, report it")


def main() -> None:
    """Entry point of the ``surgeon`` console script."""
    app()


if __name__ == "__main__":
    main()
