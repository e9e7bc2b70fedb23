"""The ``kan`` pass on the real all-MiniLM-L6-v2: sentence-embedding cosine to the original model.

Calibration uses the first 30 lines of examples/data/kan_sentences.txt, evaluation the last 30 (disjoint).
Embeddings are mean-pooled over the attention mask and L2-normalised (the model's sentence-transformers
pooling). Run: ``python examples/kan_minilm.py`` (all rows: several minutes on 1 CPU thread; the B-spline
``fit_weighting: output`` row is the slow one) or ``python examples/kan_minilm.py 1 3`` for chosen rows (row 8 is
the pure rational with ``fit_weighting: norm``). The cosine on the calibration sentences is printed too: choices
are made on it, never on the evaluation sentences.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

import surgeon
from surgeon.calibration import tokenize
from surgeon.passes import KAN

torch.set_num_threads(1)
LINES = [l.strip() for l in (Path(__file__).parent / "data" / "kan_sentences.txt").read_text().splitlines() if l.strip()]
CALIBRATION, EVALUATION = LINES[:30], LINES[30:]


def embed(model, batch) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def main() -> None:
    base = surgeon.load_model("minilm")
    calibration = [tokenize(base, CALIBRATION[i:i + 10]) for i in range(0, len(CALIBRATION), 10)]
    evaluation = tokenize(base, EVALUATION)
    reference = embed(base, evaluation)
    calibration_all = tokenize(base, CALIBRATION)  # the calibration cosine is what choices may look at
    reference_cal = embed(base, calibration_all)
    configs = [KAN(), KAN(form="pure"), KAN(form="pure", fit_weighting="down"),
               KAN(form="pure", fit_weighting="output"), KAN(basis="bspline"), KAN(basis="bspline", form="pure"),
               KAN(basis="bspline", form="pure", fit_weighting="output"),
               # pure rational with one numerator per group (leaves KAT's shared-numerator layout)
               KAN(form="pure", fit_weighting="output", numerators="group"),
               # F2 fitted against the error after fc2 *and* after the next norm (tokens weighted by 1/σ²)
               KAN(form="pure", fit_weighting="norm"),
               KAN(form="pure", fit_weighting="norm", numerators="group")]
    if len(sys.argv) > 1:  # e.g. `python examples/kan_minilm.py 1 2` runs rows 1 and 2 only
        configs = [configs[int(i)] for i in sys.argv[1:]]
    print("| structure | basis | form | init | fit weighting | numerators, groups | mean cosine (calibration) | "
          "mean cosine (eval) | min cosine (eval) | worst init error (after) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        model = copy.deepcopy(base)
        start = time.perf_counter()
        surgeon.apply(model, [config], calibration=calibration)
        seconds = time.perf_counter() - start
        cos = (embed(model, evaluation) * reference).sum(-1)
        cos_cal = (embed(model, calibration_all) * reference_cal).sum(-1)
        worst = max(r["init_error"]["after"] for r in surgeon.report(model)[0].records)
        shape = f"{config.numerators}, {config.groups}" if config.basis == "rational" else "–"
        print(f"| {config.structure} | {config.basis} | {config.form} | {config.init} | {config.fit_weighting} | {shape} | "
              f"{cos_cal.mean():.6f} | {cos.mean():.6f} | {cos.min():.6f} | {worst:.2e} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
