"""The pass manager: certification of declared guarantees, reports, requires/ensures, history."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import surgeon
from surgeon.errors import CertificationError, SurgeonError
from surgeon.passes import FoldNorm
from surgeon.pipeline import Found, PassConfig, PassHandler, Site, register_pass
from surgeon.pipeline.certify import certificate


@dataclass(frozen=True, kw_only=True)
class NudgeHead(PassConfig):
    """Test pass: claims to be exact but scales the output head."""

    pass_name = "test_nudge_head"
    factor: float = 1.01
    refuse: bool = False


@register_pass(NudgeHead)
class NudgeHeadPass(PassHandler):
    preserves = "exact"
    summary = "test only"

    def requires(self, ctx, config):
        if config.refuse:
            raise SurgeonError("refused by requires")

    def find(self, ctx, config):
        return Found([Site("lm_head", "")], skipped=[("model.embed_tokens", "not a head")])

    def rewrite(self, ctx, config, sites):
        with torch.no_grad():
            ctx.model.lm_head.weight.mul_(config.factor)
        return True


def test_exact_pass_that_changes_outputs_fails_certification_naming_prior_passes():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(CertificationError) as err:
        surgeon.apply(model, [FoldNorm(), NudgeHead()])
    message = str(err.value)
    assert "step 1, pass `test_nudge_head` (after fold_norm)" in message
    assert "declares `exact`" in message and "relative error 1.00e-02" in message


def test_exact_pass_within_tolerance_passes_and_reports():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    surgeon.apply(model, [NudgeHead(factor=1.0 + 1e-7), NudgeHead(factor=1.0, target="lm_head")])
    step, targeted = surgeon.report(model)
    assert step.matched == ["lm_head"] and step.skipped == [("model.embed_tokens", "not a head")]
    assert targeted.skipped == []  # sites outside the target are not listed as skipped
    assert step.worst_error <= 1e-5 and step.params_before == step.params_after
    assert "test_nudge_head (exact)" in step.text()


def test_requires_can_refuse():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(SurgeonError, match="refused by requires"):
        surgeon.apply(model, [NudgeHead(refuse=True)])


def test_report_records_certificates_per_scope_and_model():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    surgeon.apply(model, [FoldNorm()])
    [step] = surgeon.report(model)
    scopes = {c.scope for c in step.certificates}
    assert {"<model>", "model.layers.0", "model.layers.1"} <= scopes
    assert all(c.cosine > 0.999999 for c in step.certificates)
    data = step.as_dict()
    assert data["pass"] == "fold_norm" and len(data["records"]) == len(step.matched) == 5


def test_certificate_metrics():
    a = torch.tensor([1.0, 2.0, 3.0])
    cert = certificate("x", a, a * 1.1)
    assert cert.relative_error == pytest.approx(0.1)
    assert cert.cosine == pytest.approx(1.0)
    assert cert.sqnr_db == pytest.approx(20.0)
    assert certificate("x", a, a).sqnr_db == float("inf")


def test_registering_a_pass_twice_is_refused():
    with pytest.raises(TypeError, match="registered twice"):
        @register_pass(NudgeHead)
        class Other(PassHandler):
            preserves = "exact"
