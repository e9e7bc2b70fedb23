"""Matrix rows for the equivalent-transform passes (``smooth``, ``rotate``, ``flat``, ``ost``)."""

from __future__ import annotations

import surgeon
from surgeon.passes import CalibrateQuant, FakeQuant, Flat, Ost, Rotate, Smooth

from pass_cases import PassCase


def _batches(model):
    return [surgeon.example_inputs(model, batch=2, seq=6, seed=s) for s in range(2)]


CASES = [
    PassCase("smooth-fold-llama", "tiny-llama", (Smooth(placement="fold"),), calibration=_batches),
    PassCase("smooth-auto-bert", "tiny-bert", (Smooth(),), calibration=_batches),
    PassCase("smooth-shift-online-llama", "tiny-llama", (Smooth(shift=True, placement="online"),),
             calibration=_batches),
    PassCase("rotate-gpt2-conv1d", "tiny-gpt2", (Rotate(),)),
    PassCase("rotate-orthogonal-vit", "tiny-vit", (Rotate(kind="orthogonal"),)),
    PassCase("rotate-residual-centred-gpt2", "tiny-gpt2", (Rotate(placement="residual"),)),
    PassCase("rotate-residual+quant-qwen3", "tiny-qwen3",
             (Rotate(placement="residual"), FakeQuant(weight="int4-sym-channel", input="int8-sym-token"))),
    PassCase("smooth-learnable+rotate+quant-mistral", "tiny-mistral",
             (Smooth(learnable=True, target="re:.*mlp.*"), Rotate(target="re:.*self_attn.*"),
              FakeQuant(weight="int4-sym-channel-lwc", input="int8-sym-token"), CalibrateQuant(epochs=1)),
             calibration=_batches),
    PassCase("flat+quant-calibrate-qwen2", "tiny-qwen2",
             (Flat(), FakeQuant(weight="int4-sym-channel-lwc", input="int4-sym-token-lwc"), CalibrateQuant(epochs=1)),
             calibration=_batches),
    PassCase("ost+quant-calibrate-opt", "tiny-opt",
             (Ost(), FakeQuant(weight="int4-sym-channel-lwc", input="int4-sym-token-lwc", kv="int8-asym-token"),
              CalibrateQuant(epochs=1)), calibration=_batches),
]
