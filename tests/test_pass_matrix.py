"""Every registered pass, through the same battery: apply, guarantee, recipe round trip, save/load."""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.pipeline.certify import EXACT_RTOL
from surgeon.pipeline.recipe import Recipe
from surgeon.pipeline.registry import registered_passes
from surgeon.runner import output_tensors, run_model

from pass_cases import all_cases

CASES = all_cases()


def test_every_registered_pass_has_a_matrix_row():
    covered = {step.pass_name for case in CASES for step in case.steps}
    missing = {name for name in registered_passes() if not name.startswith("test_")} - covered
    assert not missing, f"add rows to tests/pass_cases.py for: {sorted(missing)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pass_case(case, tmp_path):
    model = surgeon.load_model(case.model, num_layers=case.num_layers)
    calibration = case.calibration(model) if case.calibration else None
    surgeon.apply(model, list(case.steps), calibration=calibration)
    reports = surgeon.report(model)
    assert [r.name for r in reports] == [s.pass_name for s in case.steps]
    for rep in reports:
        assert rep.matched and rep.certificates
        if rep.preserves == "exact":
            assert rep.worst_error <= EXACT_RTOL, rep.text()
    recipe = Recipe(case.steps)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    surgeon.save(model, tmp_path / "out")
    loaded = surgeon.load(tmp_path / "out")
    batch = surgeon.example_inputs(model, batch=3, seq=5, seed=9)
    before, after = output_tensors(run_model(model, batch)), output_tensors(run_model(loaded, batch))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
