"""``surgeon.verify``: reload a saved output, rebuild its base model, and re-certify the guarantees."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from surgeon.errors import SurgeonError
from surgeon.inputs import example_inputs
from surgeon.persist.reader import load
from surgeon.pipeline.certify import EXACT_RTOL, certificate
from surgeon.runner import output_tensors, run_model


@dataclass
class Check:
    """One verification check and its outcome."""

    name: str
    passed: bool
    detail: str


@dataclass
class Verification:
    """Every check run by :func:`verify`; ``ok`` when all passed."""

    directory: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)


def rebuild_original(origin: dict | None) -> nn.Module | None:
    """The untransformed model a saved output came from, when it can be rebuilt offline."""
    from surgeon.loading import load_model

    if not origin:
        return None
    if "zoo" in origin:
        return load_model(origin["zoo"], num_layers=origin.get("num_layers"), seed=origin.get("seed", 0))
    if origin.get("minilm"):
        return load_model("minilm")
    if origin.get("hf_dir") and Path(origin["hf_dir"]).is_dir():
        return load_model(origin["hf_dir"])
    return None


def verify(directory: str | Path) -> Verification:
    """Check hashes, reload, and compare the reloaded model with its rebuilt base where passes are exact."""
    result = Verification(str(directory))
    model = load(directory)  # hash mismatches and damaged files raise SurgeonError here
    result.checks.append(Check("hashes and reload", True, "every shard matches its SHA-256; model rebuilt"))
    manifest = model.surgeon_manifest
    preserves = [r["preserves"] for r in manifest["reports"]]
    base = rebuild_original(manifest["source"].get("origin"))
    if base is None:
        result.checks.append(Check("re-certify", True, "base model not rebuildable offline; skipped"))
        return result
    worst = 0.0
    for batch in (example_inputs(model), example_inputs(model, batch=3, seq=5, seed=1)):
        before, after = output_tensors(run_model(base, batch)), output_tensors(run_model(model, batch))
        if before.keys() != after.keys():
            raise SurgeonError("the reloaded model's outputs differ in structure from its base",
                               where=str(directory), fix="Save the model again")
        cert = certificate("<model>", list(before.values()), list(after.values()))
        worst = max(worst, cert.relative_error)
    if all(p == "exact" for p in preserves):
        passed = worst <= EXACT_RTOL
        detail = f"all passes exact; relative error to the base {worst:.2e} (limit {EXACT_RTOL:g})"
    else:
        passed = True
        detail = f"passes {', '.join(sorted(set(preserves)))}: relative error to the base {worst:.2e} (reported)"
    result.checks.append(Check("re-certify against the base", passed, detail))
    return result
