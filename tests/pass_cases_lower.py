"""Matrix rows of ``lower``: after ``kan`` (group rational, B-spline), after ``fake_quant`` (integer quantizers)
and after ``flat`` + ``fake_quant`` + ``calibrate_quant`` (FlatQuant layers)."""

import surgeon
from surgeon.passes import KAN, CalibrateQuant, FakeQuant, Flat, Lower

from pass_cases import PassCase

CASES = [
    PassCase("kan-then-lower-llama", "tiny-llama", (KAN(form="pure"), Lower())),
    PassCase("kan-bspline-then-lower-qwen2", "tiny-qwen2",
             (KAN(basis="bspline", structure="kan", form="pure"), Lower(ops=("bspline_basis",)))),
    PassCase("fake_quant-then-lower-gpt2", "tiny-gpt2",
             (FakeQuant(weight="int4-asym-g16-lwc", input="int8-sym-token"), Lower(ops=("fake_quant",)))),
    PassCase("flat-quant-calibrate-then-lower-qwen2", "tiny-qwen2",
             (Flat(), FakeQuant(weight="int4-sym-channel-lwc", input="int4-asym-token-lwc"), CalibrateQuant(epochs=1),
              Lower()),
             calibration=lambda m: [surgeon.example_inputs(m, batch=2, seq=6, seed=s) for s in range(2)]),
]
