"""The table every registered pass joins: each row is a model and a list of steps.

``tests/test_pass_matrix.py`` runs every row: the steps apply, each report keeps its declared guarantee,
the recipe round-trips through plain data, and the result saves and reloads bit-identically. A pass
without a row fails the matrix's coverage test. A pass family adds its rows in its own module
``tests/pass_cases_<family>.py`` defining ``CASES``; :func:`all_cases` gathers them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
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


def all_cases() -> list[PassCase]:
    """The rows above plus every ``tests/pass_cases_*.py`` module's ``CASES``."""
    cases = list(CASES)
    for path in sorted(Path(__file__).parent.glob("pass_cases_*.py")):
        cases += importlib.import_module(path.stem).CASES
    return cases
