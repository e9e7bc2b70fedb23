"""Rich tables for the CLI: pass reports, capture reports, the pass catalogue."""

from __future__ import annotations

import dataclasses

from rich.table import Table

from surgeon.capture import Capture
from surgeon.pipeline.config import describe_type
from surgeon.pipeline.registry import PassHandler
from surgeon.pipeline.report import PassReport
import typing


def pass_table(reports: list[PassReport]) -> Table:
    """One row per applied pass: sites, parameters, time and certification of the model's outputs."""
    table = Table(title="passes (certified on the model's outputs)", title_justify="left")
    for col in ("#", "pass", "preserves", "sites", "skipped", "params", "ms", "rel.err", "cosine", "SQNR"):
        table.add_column(col, justify="left" if col in ("pass", "preserves") else "right", no_wrap=True)
    for r in reports:
        cert = r.model_certificate
        params = f"{r.params_before:,}" if r.params_before == r.params_after else \
            f"{r.params_before:,}→{r.params_after:,}"
        table.add_row(str(r.step), r.name, r.preserves, str(len(r.matched)), str(len(r.skipped)), params,
                      f"{r.seconds * 1000:.0f}", f"{cert.relative_error:.1e}" if cert else "—",
                      f"{cert.cosine:.6f}" if cert else "—", f"{cert.sqnr_db:.0f} dB" if cert else "—")
    return table


def scope_table(cap: Capture) -> Table:
    """The captured scopes: class, instances, nodes, status."""
    table = Table(title=f"scopes (captured in {cap.seconds * 1000:.0f} ms)", title_justify="left")
    for col in ("scope", "class", "instances", "nodes", "status"):
        table.add_column(col)
    for s in cap.scopes.values():
        status = "[green]ok[/]" if s.ok else f"[red]failed[/]: {s.failure}"
        table.add_row(s.path or "<model>", s.module_class, str(len(s.instances)), str(s.node_count()), status)
    return table


def passes_table(handlers: dict[str, PassHandler]) -> Table:
    """The registered passes with their options, defaults, guarantee and source paper."""
    table = Table(title="registered passes", title_justify="left", show_lines=True)
    for col in ("pass", "preserves", "site", "options (default)", "summary / paper"):
        table.add_column(col)
    for name, h in handlers.items():
        table.add_row(name, h.preserves, h.site_kind, options_text(h), f"{h.summary}\n[dim]{h.paper}[/]")
    return table


def options_text(handler: PassHandler) -> str:
    """``name: type = default`` per option, common fields last."""
    hints = typing.get_type_hints(handler.config_type)
    lines = []
    for f in handler.config_type.option_fields():
        default = f.default if f.default is not dataclasses.MISSING else "required"
        lines.append(f"{f.name}: {describe_type(hints.get(f.name))} = {default!r}")
    return "\n".join(lines) or "(none; every pass takes target and expect)"
