"""The table every registered pass joins: each row is a model and a list of steps.

``tests/test_pass_matrix.py`` runs every row: the steps apply, each report keeps its declared guarantee,
the recipe round-trips through plain data, and the result saves and reloads bit-identically. A pass
without a row fails the matrix's coverage test. Add rows here when you add a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from surgeon.passes import FoldNorm, SwapActivation


@dataclass(frozen=True)
class PassCase:
    """One matrix row: a zoo model (with its depth) and the pass configs to apply to it in order."""

    id: str
    model: str
    steps: tuple
    num_layers: int = 2
    calibration: Callable[[Any], list] | None = field(default=None, compare=False)


CASES: list[PassCase] = [
    PassCase("fold_norm-llama", "tiny-llama", (FoldNorm(),)),
    PassCase("fold_norm-gpt2-tied", "tiny-gpt2", (FoldNorm(),)),
    PassCase("fold_norm-gemma", "tiny-gemma", (FoldNorm(),)),
    PassCase("swap-bert", "tiny-bert", (SwapActivation(to="relu"),)),
    PassCase("fold+swap-qwen2", "tiny-qwen2", (FoldNorm(), SwapActivation(to="gelu_tanh"))),
]
