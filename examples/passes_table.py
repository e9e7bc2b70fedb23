"""Print the README's table of passes from the registry (the README test keeps them in step)."""

from __future__ import annotations

import surgeon
from surgeon.pipeline.registry import registered_passes


def passes_markdown() -> str:
    """A markdown table: pass, guarantee, what a site is, options with defaults, summary and paper."""
    rows = ["| pass | preserves | site | options (default) | what it does | from |", "|---|---|---|---|---|---|"]
    for name, h in registered_passes().items():
        if name.startswith("test_"):
            continue
        options = ", ".join(f"`{f.name}={f.default!r}`" for f in h.config_type.option_fields()) or "—"
        rows.append(f"| `{name}` | {h.preserves} | {h.site_kind} | {options} | {h.summary} | {h.paper} |")
    return "\n".join(rows)


if __name__ == "__main__":
    assert surgeon.passes  # importing surgeon registers the passes
    print(passes_markdown())
