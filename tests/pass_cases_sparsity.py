"""Matrix rows of the activation-sparsity passes (``topk``, ``teal``, ``wina``, ``rsparse``)."""

from pass_cases import PassCase

import surgeon
from surgeon.passes import Dopamine, FoldNorm, RSparse, Teal, TopK, Wina


def _calibration(model):
    return [surgeon.example_inputs(model, batch=2, seq=12, seed=s) for s in (1, 2)]


CASES = [
    PassCase("topk-gpt2", "tiny-gpt2", (TopK(sparsity=0.5),)),
    PassCase("teal-bert", "tiny-bert", (Teal(sparsity=0.5),), calibration=_calibration),
    PassCase("wina-llama", "tiny-llama", (Wina(sparsity=0.5),), calibration=_calibration),
    PassCase("rsparse-qwen2", "tiny-qwen2", (RSparse(sparsity=0.5, alpha=0.7),)),
    PassCase("fold+dopamine+teal-llama", "tiny-llama", (FoldNorm(), Dopamine(), Teal(sparsity=0.3))),
]
