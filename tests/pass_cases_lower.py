"""Matrix rows of ``lower``: after ``kan`` (group rational, B-spline) and after ``fake_quant`` (integer quantizers)."""

from surgeon.passes import KAN, FakeQuant, Lower

from pass_cases import PassCase

CASES = [
    PassCase("kan-then-lower-llama", "tiny-llama", (KAN(form="pure"), Lower())),
    PassCase("kan-bspline-then-lower-qwen2", "tiny-qwen2",
             (KAN(basis="bspline", structure="kan", form="pure"), Lower(ops=("bspline_basis",)))),
    PassCase("fake_quant-then-lower-gpt2", "tiny-gpt2",
             (FakeQuant(weight="int4-asym-g16-lwc", input="int8-sym-token"), Lower(ops=("fake_quant",)))),
]
