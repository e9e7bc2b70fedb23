"""``fake_quant``, ``calibrate_quant`` and ``pack_quant`` on zoo models: sites, options, errors, save/load."""

from __future__ import annotations

import copy

import pytest
import torch

import surgeon
from surgeon.errors import MatchError, RecipeError
from surgeon.passes import CalibrateQuant, FakeQuant, PackQuant
from surgeon.passes.quant import PackedLinear, QuantLinear, SoftmaxQuant
from surgeon.runner import output_tensors, run_model

torch.set_num_threads(1)


def _batches(model, n=3):
    return [surgeon.example_inputs(model, batch=2, seq=7, seed=s) for s in range(n)]


def _out(model, batch):
    return output_tensors(run_model(model, batch))


def _rel(a, b):
    return float((a - b).norm() / a.norm())


def test_sites_kv_softmax_and_default_exclusions_on_llama():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    surgeon.apply(model, [FakeQuant(softmax="log4", kv="int8-asym-token")])
    [rep] = surgeon.report(model)
    assert ("lm_head", "excluded by `exclude` entry 'head'") in rep.skipped
    assert not isinstance(model.lm_head, QuantLinear)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.k_proj, QuantLinear) and attn.k_proj.output_quant is not None
    assert attn.q_proj.output_quant is None and isinstance(attn.softmax_quant, SoftmaxQuant)


def test_softmax_quantizer_sees_real_probabilities_and_changes_only_attention():
    model = surgeon.load_model("tiny-bert", num_layers=1)
    seen = []
    reference = copy.deepcopy(model)
    surgeon.apply(model, [FakeQuant(weight="none", input="none", softmax="log2")])
    sq = model.encoder.layer[0].attention.self.softmax_quant
    sq.register_forward_hook(lambda m, a, o: seen.append((a[0].detach(), o.detach())))
    batch = surgeon.example_inputs(model, batch=2, seq=6, seed=1)
    out = _out(model, batch)
    [(probs, quantised)] = seen
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)  # it quantises the softmax output
    levels = quantised[quantised > 0] / sq.delta  # log2 levels: powers of two times Δ
    assert torch.allclose(torch.log2(levels), torch.round(torch.log2(levels)), atol=1e-5)
    assert 0 < _rel(_out(reference, batch)["['last_hidden_state']"], out["['last_hidden_state']"]) < 0.5


def test_w8a8_rtn_is_close_and_w4_is_worse():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    batch = surgeon.example_inputs(model, batch=2, seq=7, seed=5)
    ref = _out(model, batch)["['logits']"]
    errs = {}
    for spec in ("int8-sym-channel", "int4-sym-channel"):
        m = surgeon.apply(copy.deepcopy(model), [FakeQuant(weight=spec, input="int8-token")])
        errs[spec] = _rel(ref, _out(m, batch)["['logits']"])
    assert errs["int8-sym-channel"] < 0.02 < errs["int4-sym-channel"]


def test_calibration_lowers_the_block_error_and_is_seeded():
    model = surgeon.load_model("tiny-llama", num_layers=2)
    batches = _batches(model)
    ref = _out(model, batches[0])["['logits']"]
    base = surgeon.apply(copy.deepcopy(model), [FakeQuant(weight="int3-asym-g16-lwc", input="int8-tensor-lsq")],
                         calibration=batches)
    rtn = _rel(ref, _out(base, batches[0])["['logits']"])
    runs = [surgeon.apply(copy.deepcopy(base), [CalibrateQuant(epochs=4, seed=1)], calibration=batches) for _ in range(2)]
    cal = _rel(ref, _out(runs[0], batches[0])["['logits']"])
    assert cal < rtn
    assert all(torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()))
    before, after = base.state_dict(), runs[0].state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("_quant." in k for k in moved)  # only quantizer parameters train


def test_static_observers_set_ranges_from_calibration():
    model = surgeon.load_model("tiny-llama", num_layers=1)
    batches = _batches(model)
    ranges = {}
    for method in ("minmax", "percentile", "mse"):
        m = surgeon.apply(copy.deepcopy(model), [FakeQuant(input="int8-asym-tensor", observer=method, percentile=99.0)],
                          calibration=batches)
        ranges[method] = float(m.model.layers[0].mlp.down_proj.input_quant.hi)
    seen = []
    h = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, a, o: seen.append(a[0].max()))
    for b in batches:
        _out(model, b)
    h.remove()
    assert ranges["minmax"] == pytest.approx(float(max(seen)))
    assert ranges["percentile"] < ranges["minmax"] and ranges["mse"] <= ranges["minmax"]


def test_w4_g128_packs_under_4_5_bits_and_round_trips(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    config._attn_implementation = "eager"
    model = surgeon.load_model(LlamaForCausalLM(config).eval())
    surgeon.apply(model, [FakeQuant(weight="int4-asym-g128", input="none"), PackQuant()])
    [_, pack] = surgeon.report(model)
    assert pack.preserves == "exact" and pack.worst_error == 0.0
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    weights = sum(m.in_features * m.out_features for m in packed)
    bits = sum((m.codes.numel() * 8 + m.step.numel() * 32 + m.zero.numel() * 16) for m in packed)
    assert bits / weights <= 4.5
    surgeon.save(model, tmp_path / "o")
    loaded = surgeon.load(tmp_path / "o")
    batch = surgeon.example_inputs(model, batch=2, seq=5, seed=3)
    a, b = _out(model, batch), _out(loaded, batch)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_option_and_site_errors():
    with pytest.raises(RecipeError, match="`kv`"):
        FakeQuant(kv="int4-token-lsq")
    with pytest.raises(RecipeError, match="`percentile`"):
        FakeQuant(percentile=20.0)
    with pytest.raises(RecipeError, match="all 'none'"):
        FakeQuant(weight="none", input="none")
    with pytest.raises(RecipeError, match="`epochs`"):
        CalibrateQuant(epochs=0)
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(MatchError, match="do not divide"):
        surgeon.apply(model, [FakeQuant(weight="int4-g48", input="none")])
    with pytest.raises(MatchError, match="no repeated block"):
        surgeon.apply(model, [CalibrateQuant()])
