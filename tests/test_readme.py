"""The README's pass table is generated from the registry and must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_pass_table_matches_the_registry():
    spec = importlib.util.spec_from_file_location("passes_table", ROOT / "examples" / "passes_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- passes-table:start -->") + len("<!-- passes-table:start -->")
    end = readme.index("<!-- passes-table:end -->")
    assert readme[start:end].strip() == module.passes_markdown().strip()


def test_readme_quickstart_has_exactly_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quickstart"):readme.index("## Recipes")]
    blocks = [b for b in quick.split("```bash")[1:]]
    assert len(blocks) == 2
    test_command = blocks[1].split("```")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0" in ci and "pip install -q -e '.[test,models]'" in ci
    assert "python -m pytest" in test_command and "python -m pytest" in ci
