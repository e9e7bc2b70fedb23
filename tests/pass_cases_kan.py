"""Matrix rows of the KAN family (``kan``): each basis and structure, both forms, every init."""

from surgeon.passes import KAN

from pass_cases import PassCase

CASES = [
    PassCase("kan-kat-rational-residual-bert", "tiny-bert", (KAN(),)),
    PassCase("kan-kat-rational-pure-llama", "tiny-llama", (KAN(form="pure"),)),
    PassCase("kan-kat-bspline-pure-gpt2", "tiny-gpt2", (KAN(basis="bspline", form="pure"),)),
    PassCase("kan-kan-rational-distill-vit", "tiny-vit",
             (KAN(structure="kan", form="pure", init="distill", steps=20, samples=256),)),
    PassCase("kan-kan-bspline-residual-opt", "tiny-opt", (KAN(structure="kan", basis="bspline"),)),
    PassCase("kan-kan-bspline-scratch-qwen2", "tiny-qwen2",
             (KAN(structure="kan", basis="bspline", form="pure", init="scratch"),)),
]
