"""``repquant_fold``: per-channel LayerNorm-output quantizers folded to per-tensor on zoo models."""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.errors import MatchError
from surgeon.passes import CalibrateQuant, FakeQuant, RepQuantFold
from surgeon.passes.quant import QuantLinear

torch.set_num_threads(1)
BITS = 4


def _quantised(name: str, seed: int = 0):
    """A zoo model with int4 asym per-channel LWC input quantizers whose dual clips are non-trivial.

    Every quantizer of width C gets the same random logits, so the readers of one norm share a quantizer."""
    model = surgeon.load_model(name, num_layers=2)
    cal = [surgeon.example_inputs(model, batch=2, seq=6, seed=s) for s in range(2)]
    surgeon.apply(model, [FakeQuant(weight="none", input=f"int{BITS}-asym-channel-lwc")], calibration=cal)
    for m in model.modules():
        if isinstance(m, QuantLinear):
            g = torch.Generator().manual_seed(seed)
            q = m.input_quant
            q.lower.data.copy_(torch.rand(q.lower.shape, generator=g) * 3 + 0.5)
            q.upper.data.copy_(torch.rand(q.upper.shape, generator=g) * 3 + 0.5)
    return model


@torch.no_grad()
def _codes_per_channel(y, q):
    """Independent formula: per-channel asym codes with clips σ(l)·min, σ(u)·max."""
    lo, hi = torch.sigmoid(q.lower) * q.lo, torch.sigmoid(q.upper) * q.hi
    step = ((hi - lo) / (2**BITS - 1)).clamp(1e-5, 1e4)
    zero = torch.round(-lo / step)
    return torch.clamp(torch.round(y / step) + zero, 0, 2**BITS - 1), step, zero


def _record_inputs(model, paths, batch):
    seen = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda mod, a, o, p=p: seen.__setitem__(p, (a[0].detach().clone(), o.detach().clone()))) for p in paths]
    with torch.no_grad():
        logits = model(**batch).logits
    for h in hooks:
        h.remove()
    return seen, logits


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
def test_fold_keeps_integer_codes_and_outputs_on_pre_norm_models(name):
    model = _quantised(name)
    batch = surgeon.example_inputs(model, batch=2, seq=7, seed=11)
    readers = [p for p, m in model.named_modules() if isinstance(m, QuantLinear)]
    old = {p: model.get_submodule(p).input_quant for p in readers}
    before, logits_before = _record_inputs(model, readers, batch)
    surgeon.apply(model, [RepQuantFold()])
    [rep] = [r for r in surgeon.report(model) if r.name == "repquant_fold"]
    folded = {r for rec in rep.records for r in rec["readers"]}
    assert len(rep.matched) == 4 and len(folded) >= 4  # ln_1/ln_2 (attn input, MLP input) in both layers
    after, logits_after = _record_inputs(model, readers, batch)
    mismatched = total = 0
    for p in folded:
        y, _ = before[p]
        y2, out2 = after[p]
        codes, step, zero = _codes_per_channel(y, old[p])
        q = model.get_submodule(p).input_quant
        assert q.spec.granularity == "tensor"
        step_t, zero_t = step.double().mean(), torch.round(zero.double().mean())
        assert float(q.step.detach()) == pytest.approx(float(step_t), rel=1e-6) and float(q.zero) == float(zero_t)
        codes2 = torch.clamp(torch.round(y2 / q.step.detach()) + q.zero, 0, 2**BITS - 1)
        diff = (codes2 - codes).abs()
        assert float(diff.max()) <= 1  # only rounding ties can move a code, by one
        mismatched += int((diff > 0).sum())
        total += diff.numel()
        out = before[p][1]
        assert float((out2 - out).norm() / out.norm()) < 1e-3
    assert mismatched / total < 1e-3
    for p in set(readers) - folded:  # unfoldable readers (out_proj, fc2) keep their per-channel quantizer
        assert model.get_submodule(p).input_quant.spec.granularity == "channel"
    assert float((logits_after - logits_before).norm() / logits_before.norm()) < 1e-4


def test_fold_replays_after_save_and_load(tmp_path):
    model = _quantised("tiny-opt")
    surgeon.apply(model, [RepQuantFold()])
    surgeon.save(model, tmp_path / "o")
    loaded = surgeon.load(tmp_path / "o")
    batch = surgeon.example_inputs(model, batch=2, seq=5, seed=3)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded.model.decoder.layers[0].self_attn.k_proj.input_quant.spec.text() == "int4-asym-tensor-lsq"


def test_readers_trained_apart_are_merged_and_noted():
    model = _quantised("tiny-opt")
    batches = [surgeon.example_inputs(model, batch=2, seq=6, seed=s) for s in range(2)]
    surgeon.apply(model, [CalibrateQuant(epochs=1), RepQuantFold()], calibration=batches)
    rep = surgeon.report(model)[-1]
    assert any("merged" in n and "self_attn_layer_norm" in n for n in rep.notes)


@pytest.mark.parametrize("name,why", [
    ("tiny-bert", "residual stream keeps its values"),  # post-norm (MiniLM's architecture)
    ("tiny-llama", "RMSNorm has no bias"),
])
def test_post_norm_and_rmsnorm_models_are_skipped_with_a_reason(name, why):
    model = surgeon.load_model(name, num_layers=1)
    surgeon.apply(model, [FakeQuant(weight="none", input="int4-asym-channel-lwc")])
    with pytest.raises(MatchError, match=why):
        surgeon.apply(model, [RepQuantFold()])


def test_per_token_readers_are_skipped():
    model = surgeon.load_model("tiny-opt", num_layers=1)
    surgeon.apply(model, [FakeQuant(weight="none", input="int4-asym-token")])
    with pytest.raises(MatchError, match="not int asym per-channel"):
        surgeon.apply(model, [RepQuantFold()])
