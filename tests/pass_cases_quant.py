"""Matrix rows for the quantization passes (``fake_quant``, ``calibrate_quant``, ``pack_quant``,
``repquant_fold``)."""

from __future__ import annotations

import surgeon
from surgeon.passes import CalibrateQuant, FakeQuant, PackQuant, RepQuantFold

from pass_cases import PassCase


def _batches(model):
    return [surgeon.example_inputs(model, batch=2, seq=6, seed=s) for s in range(2)]


CASES = [
    PassCase("fake_quant-w8a8-bert-softmax-kv", "tiny-bert",
             (FakeQuant(softmax="logsqrt4", kv="int8-asym-token"),)),
    PassCase("fake_quant-fp8-post-gpt2", "tiny-gpt2",
             (FakeQuant(weight="post4-channel", input="fp8e4m3-tensor", observer="mse"),), calibration=_batches),
    PassCase("quant-w4-lwc-calibrate-pack-llama", "tiny-llama",
             (FakeQuant(weight="int4-asym-g16-lwc", input="int8-tensor-lsq"), CalibrateQuant(epochs=1),
              PackQuant()), calibration=_batches),
    PassCase("quant-asq-calibrate-qwen2", "tiny-qwen2",
             (FakeQuant(weight="int4-sym-channel-lwc", input="int4-token-asq"), CalibrateQuant(epochs=1)),
             calibration=_batches),
    PassCase("quant-repquant-calibrate-fold-pack-opt", "tiny-opt",
             (FakeQuant(weight="int4-asym-channel-lwc", input="int4-asym-channel-lwc"), CalibrateQuant(epochs=1),
              RepQuantFold(), PackQuant()), calibration=_batches),
]
