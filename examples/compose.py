"""Compose passes in Python, read the reports, save the result and reload it.

    python examples/compose.py [OUT_DIR]
"""

from __future__ import annotations

import sys

import torch

import surgeon
from surgeon.passes import FoldNorm, SwapActivation


def main(out: str = "out/compose") -> None:
    """Fold norms and swap activations on tiny-qwen2, print what each pass did, save and reload."""
    model = surgeon.load_model("tiny-qwen2", num_layers=4)
    batch = surgeon.example_inputs(model)
    with torch.no_grad():
        before = model(**batch).logits
    surgeon.apply(model, [FoldNorm(target="model.layers.*", expect=8), SwapActivation(to="gelu", expect=4)])
    for step in surgeon.report(model):
        print(step.text())
    surgeon.save(model, out, force=True)
    reloaded = surgeon.load(out)
    with torch.no_grad():
        after = reloaded(**batch).logits
    print(f"saved to {out}; reloaded logits equal in-memory ones: {torch.equal(after, model(**batch).logits)}; "
          f"relative change from the original: {float((after - before).norm() / before.norm()):.3e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
