"""The CLI: every command through typer's runner, exit codes 0/1/2, and one real subprocess run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import surgeon
from surgeon.cli.app import app

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def test_apply_saves_and_prints_the_pass_table(tmp_path):
    result, out = invoke("apply", "tiny-llama", "--recipe", RECIPES / "quickstart.yaml", "--out", tmp_path / "o")
    assert result.exit_code == 0, out
    assert "fold_norm" in out and "swap_activation" in out and "saved to" in out
    assert (tmp_path / "o" / "surgeon.json").is_file()
    loaded = surgeon.load(tmp_path / "o")
    assert [r.name for r in surgeon.report(loaded)] == ["fold_norm", "swap_activation"]


def test_apply_dry_run_writes_nothing(tmp_path):
    result, out = invoke("apply", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "o", "--dry-run")
    assert result.exit_code == 0, out
    assert "match model.layers.0.input_layernorm" in out and "dry run: nothing written" in out
    assert not (tmp_path / "o").exists()


def test_apply_user_errors_exit_2_with_one_paragraph(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes:\n  - pass: fold_nrom\n")
    result, out = invoke("apply", "--recipe", bad, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Traceback" not in out
    assert "unknown pass `fold_nrom`" in out and "Did you mean `fold_norm`" in out
    result, out = invoke("apply", "tiny-lama", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "tiny-llama" in out
    result, out = invoke("apply", "tiny-bert", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "matched no norm" in out and not (tmp_path / "o").exists()
    result, out = invoke("apply", "--recipe", RECIPES / "fold_norm.yaml")
    assert result.exit_code == 2 and "--out is required" in out


def test_apply_refuses_existing_output_without_force(tmp_path):
    assert invoke("apply", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "o")[0].exit_code == 0
    result, out = invoke("apply", "--recipe", RECIPES / "swap_activation.yaml", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--force" in out
    result, out = invoke("apply", "--recipe", RECIPES / "swap_activation.yaml", "--out", tmp_path / "o", "--force")
    assert result.exit_code == 0, out
    assert surgeon.report(surgeon.load(tmp_path / "o"))[0].name == "swap_activation"


def test_apply_with_text_calibration(tmp_path):
    lines = tmp_path / "calib.txt"
    lines.write_text("the cat sat on the mat\nsurgeon rewrites models\n\nthird line\n")
    result, out = invoke("apply", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "o",
                         "--calibration", lines)
    assert result.exit_code == 0, out
    pickled = tmp_path / "calib.pt"
    pickled.write_bytes(b"\x80\x04")
    result, out = invoke("apply", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "p",
                         "--calibration", pickled)
    assert result.exit_code == 2 and "pickle" in out


def test_internal_errors_exit_1_with_traceback(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(surgeon, "apply", boom)
    result, out = invoke("apply", "--recipe", RECIPES / "fold_norm.yaml", "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "kaboom" in out and "bug in surgeon" in out


def test_inspect_lists_scopes_sites_and_failures():
    result, out = invoke("inspect", "tiny-gpt2")
    assert result.exit_code == 0, out
    assert "GPT2Block" in out and "targetable sites" in out and "fold_norm (norm): transformer.ln_f, transformer.h.0.ln_1" in out
    assert "capture failures" in out and "transformer.h.0.attn" in out


def test_inspect_one_scope_in_each_format(tmp_path):
    result, out = invoke("inspect", "tiny-llama", "--scope", "model.layers.1.mlp")
    assert result.exit_code == 0 and "gate_proj" in out and "call_module" in out
    result, out = invoke("inspect", "tiny-llama", "--scope", "model.layers.0", "--format", "dot")
    assert result.exit_code == 0 and out.lstrip().startswith("digraph")
    page = tmp_path / "g.html"
    result, out = invoke("inspect", "tiny-llama", "--scope", "model.layers.0", "--format", "html", "--out", page)
    assert result.exit_code == 0 and 'class="node"' not in out
    assert "<script" in page.read_text() and "input_layernorm" in page.read_text()
    result, out = invoke("inspect", "tiny-llama", "--scope", "model.nope")
    assert result.exit_code == 2 and "no scope at 'model.nope'" in out


def test_diff_shows_rewritten_scopes(tmp_path):
    result, out = invoke("diff", "tiny-llama", "--recipe", RECIPES / "quickstart.yaml")
    assert result.exit_code == 0, out
    assert "== model.layers.0" in out and "WeightlessNorm" in out
    page = tmp_path / "d.html"
    result, out = invoke("diff", "tiny-llama", "--recipe", RECIPES / "quickstart.yaml", "--format", "html",
                         "--out", page)
    assert result.exit_code == 0 and "(before)" in page.read_text() and "(after)" in page.read_text()


def test_passes_lists_and_describes():
    result, out = invoke("passes")
    assert result.exit_code == 0 and "fold_norm" in out and "swap_activation" in out and "exact" in out
    result, out = invoke("passes", "swap_activation")
    assert result.exit_code == 0 and "to: a string = 'gelu'" in out
    result, out = invoke("passes", "swap")
    assert result.exit_code == 2 and "unknown pass `swap`" in out


def test_verify_passes_then_fails_on_hash_mismatch_and_broken_guarantee(tmp_path):
    out_dir = tmp_path / "o"
    assert invoke("apply", "--recipe", RECIPES / "fold_norm.yaml", "--out", out_dir)[0].exit_code == 0
    result, out = invoke("verify", out_dir)
    assert result.exit_code == 0 and "ok re-certify against the base: all passes exact" in out
    manifest = json.loads((out_dir / "surgeon.json").read_text())
    manifest["source"]["origin"]["seed"] = 1  # the base rebuilt from the manifest is now another model
    (out_dir / "surgeon.json").write_text(json.dumps(manifest))
    result, out = invoke("verify", out_dir)
    assert result.exit_code == 2 and "FAILED re-certify" in out and "declared guarantee does not hold" in out
    weights = out_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x07")
    result, out = invoke("verify", out_dir)
    assert result.exit_code == 2 and f"{weights}" in out and "hash" in out


def test_real_subprocess_apply_and_verify(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "surgeon.cli", "apply", "tiny-llama", "--recipe",
                          str(RECIPES / "quickstart.yaml"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "saved to" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "surgeon.cli", "verify", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "error:" in bad.stderr


@pytest.mark.parametrize("args,expect", [
    (["passes"], "fold_norm"),
    (["inspect", "tiny-llama", "--scope", "model.layers.0.mlp"], "gate_proj"),
    (["diff", "tiny-llama", "--recipe", str(RECIPES / "fold_norm.yaml")], "WeightlessNorm"),
])
def test_real_subprocess_other_commands(args, expect):
    run = subprocess.run([sys.executable, "-m", "surgeon.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert expect in run.stdout


def test_apply_lower_flag_ends_with_the_lower_pass(tmp_path):
    recipe = tmp_path / "q.yaml"
    recipe.write_text("passes:\n  - pass: fake_quant\n    options: {weight: int4-asym-g32, input: none}\n")
    result, out = invoke("apply", "tiny-llama", "--recipe", recipe, "--out", tmp_path / "o", "--lower")
    assert result.exit_code == 0, out
    names = [r.name for r in surgeon.report(surgeon.load(tmp_path / "o"))]
    assert names == ["fake_quant", "lower"]
