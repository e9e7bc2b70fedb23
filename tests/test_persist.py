"""Save → load round trips bit-identically; writes are atomic; damaged outputs fail with clear messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

import surgeon
from surgeon.errors import SurgeonError
from surgeon.passes import FoldNorm, SwapActivation
from surgeon.passes.norm import WeightlessNorm
from surgeon.patterns import mlp_sites
from surgeon.persist.tensorfile import file_sha256
from surgeon.runner import output_tensors, run_model
from surgeon.zoo import zoo_names


def _same_outputs(a, b, batch) -> bool:
    x, y = output_tensors(run_model(a, batch)), output_tensors(run_model(b, batch))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("name", zoo_names())
def test_round_trip_is_bit_identical(name, tmp_path):
    model = surgeon.load_model(name, num_layers=2)
    has_mlp = bool(mlp_sites(surgeon.capture(model)))  # MoE experts and fused gate_up MLPs are not MLP sites
    steps = ([SwapActivation(to="gelu_tanh")] if has_mlp else []) + ([] if name == "tiny-bert" else [FoldNorm()])
    surgeon.apply(model, steps)
    surgeon.save(model, tmp_path / "out")
    loaded = surgeon.load(tmp_path / "out")
    assert type(loaded) is type(model)
    for batch in (surgeon.example_inputs(model), surgeon.example_inputs(model, batch=3, seq=5, seed=4)):
        assert _same_outputs(model, loaded, batch)
    assert [r.name for r in surgeon.report(loaded)] == [r.name for r in surgeon.report(model)]


def test_minilm_round_trip(minilm, tmp_path):
    model = surgeon.apply(surgeon.load_model("minilm"), [SwapActivation(to="relu")])
    surgeon.save(model, tmp_path / "m")
    loaded = surgeon.load(tmp_path / "m")
    assert _same_outputs(model, loaded, surgeon.example_inputs(model))


def test_replay_is_structural_and_ties_survive(tmp_path):
    model = surgeon.load_model("tiny-gpt2", num_layers=1)
    surgeon.apply(model, [SwapActivation(to="relu")])  # keeps lm_head tied to wte
    surgeon.save(model, tmp_path / "tied")
    loaded = surgeon.load(tmp_path / "tied")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    folded = surgeon.apply(surgeon.load_model("tiny-gpt2", num_layers=1), [FoldNorm()])
    surgeon.save(folded, tmp_path / "untied")
    again = surgeon.load(tmp_path / "untied")
    assert again.lm_head.weight is not again.transformer.wte.weight
    assert isinstance(again.transformer.h[0].ln_1, WeightlessNorm)
    manifest = json.loads((tmp_path / "untied" / "surgeon.json").read_text())
    assert manifest["recipe"]["passes"][0] == {"pass": "fold_norm", "target": "*", "expect": None, "options": {}}
    assert manifest["versions"]["torch"] == torch.__version__
    assert "fold_norm" in (tmp_path / "untied" / "report.md").read_text()


def test_sharded_save_writes_an_index_and_reloads(tmp_path):
    model = surgeon.load_model("tiny-llama", num_layers=2)
    surgeon.save(model, tmp_path / "s", shard_bytes=64 * 1024)
    files = sorted(p.name for p in (tmp_path / "s").glob("*.safetensors"))
    assert len(files) > 2 and files[0].startswith("model-00001-of-")
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    with safe_open(str(tmp_path / "s" / files[0]), framework="pt") as f:  # readable by safetensors itself
        assert len(list(f.keys())) >= 1
    assert _same_outputs(model, surgeon.load(tmp_path / "s"), surgeon.example_inputs(model))


def test_refuses_to_overwrite_non_surgeon_directories_and_needs_force(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    model = surgeon.load_model("tiny-llama", num_layers=1)
    with pytest.raises(SurgeonError, match="not a surgeon output; refusing to overwrite"):
        surgeon.save(model, other)
    assert (other / "notes.txt").read_text() == "keep me"
    surgeon.save(model, tmp_path / "out")
    with pytest.raises(SurgeonError, match="already holds a surgeon output.*--force"):
        surgeon.save(model, tmp_path / "out")
    surgeon.apply(model, [SwapActivation(to="relu")])
    surgeon.save(model, tmp_path / "out", force=True)
    assert [r.name for r in surgeon.report(surgeon.load(tmp_path / "out"))] == ["swap_activation"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import surgeon
    import surgeon.persist.writer as save_module
    real = save_module.write_tensors
    def slow(path, tensors, metadata=None):
        digest = real(path, tensors, metadata)
        print("shard written", flush=True)
        time.sleep(30)
        return digest
    save_module.write_tensors = slow
    model = surgeon.load_model("tiny-llama", num_layers=2, seed=5)
    surgeon.save(model, sys.argv[1], force=True, shard_bytes=64 * 1024)
""")


def test_killed_save_leaves_earlier_output_intact_and_nothing_loadable(tmp_path):
    out = tmp_path / "out"
    model = surgeon.load_model("tiny-llama", num_layers=2)
    surgeon.save(model, out)
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(out)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert child.stdout.readline().strip() == "shard written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    assert _same_outputs(model, surgeon.load(out), surgeon.example_inputs(model))
    leftovers = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers and all(p.name.startswith(".out.tmp-") for p in leftovers)
    for p in leftovers:
        with pytest.raises(SurgeonError, match="no surgeon.json"):
            surgeon.load(p)


def _corrupt(out, mutate, *, rehash: bool):
    """Apply ``mutate(bytes) -> bytes`` to the weight file; optionally record the new hash."""
    path = out / "model.safetensors"
    path.write_bytes(mutate(path.read_bytes()))
    if rehash:
        manifest = json.loads((out / "surgeon.json").read_text())
        manifest["shards"][0]["sha256"] = file_sha256(path)
        (out / "surgeon.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture()
def saved(tmp_path):
    out = tmp_path / "out"
    surgeon.save(surgeon.load_model("tiny-llama", num_layers=1), out)
    return out


def test_hash_mismatch_names_the_file(saved):
    path = _corrupt(saved, lambda b: b[:-4] + b"\x00\x00\x00\x01", rehash=False)
    with pytest.raises(SurgeonError, match=f"{path}: weight file does not match the hash"):
        surgeon.load(saved)


def test_truncated_file_names_the_file(saved):
    path = _corrupt(saved, lambda b: b[: len(b) // 2], rehash=True)
    with pytest.raises(SurgeonError, match=f"{path}: cannot read weights"):
        surgeon.load(saved)


def test_bad_header_names_the_file(saved):
    path = _corrupt(saved, lambda b: b[:8] + b"{not json" + b[17:], rehash=True)
    with pytest.raises(SurgeonError, match=f"{path}: cannot read weights"):
        surgeon.load(saved)


def test_wrong_shapes_name_the_file_and_tensor(saved):
    manifest = json.loads((saved / "surgeon.json").read_text())
    manifest["source"]["config"]["intermediate_size"] = 64  # the rebuilt MLP no longer fits the weights
    (saved / "surgeon.json").write_text(json.dumps(manifest))
    with pytest.raises(SurgeonError, match=r"model.safetensors: tensor model.layers.0.mlp.\w+_proj.weight has shape"):
        surgeon.load(saved)


def test_damaged_manifest_and_missing_shard(saved):
    (saved / "model.safetensors").rename(saved / "moved.safetensors")
    with pytest.raises(SurgeonError, match="weight file model.safetensors is missing"):
        surgeon.load(saved)
    (saved / "surgeon.json").write_text("{")
    with pytest.raises(SurgeonError, match="surgeon.json: cannot parse the manifest"):
        surgeon.load(saved)
