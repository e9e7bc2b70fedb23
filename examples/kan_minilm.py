"""The ``kan`` pass on the real all-MiniLM-L6-v2: sentence-embedding cosine to the original model.

Calibration uses the first 30 lines of examples/data/kan_sentences.txt, evaluation the last 30 (disjoint).
Embeddings are mean-pooled over the attention mask and L2-normalised (the model's sentence-transformers
pooling). Run: ``python examples/kan_minilm.py`` (all rows: several minutes on 1 CPU thread; the B-spline
``fit_weighting: output`` row is the slow one) or ``python examples/kan_minilm.py 1 3`` for chosen rows.
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
    configs = [KAN(), KAN(form="pure"), KAN(form="pure", fit_weighting="down"),
               KAN(form="pure", fit_weighting="output"), KAN(basis="bspline"), KAN(basis="bspline", form="pure"),
               KAN(basis="bspline", form="pure", fit_weighting="output")]
    if len(sys.argv) > 1:  # e.g. `python examples/kan_minilm.py 1 2` runs rows 1 and 2 only
        configs = [configs[int(i)] for i in sys.argv[1:]]
    print("| structure | basis | form | init | fit weighting | mean cosine (eval) | min cosine | worst init error (after) | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        model = copy.deepcopy(base)
        start = time.perf_counter()
        surgeon.apply(model, [config], calibration=calibration)
        seconds = time.perf_counter() - start
        cos = (embed(model, evaluation) * reference).sum(-1)
        worst = max(r["init_error"]["after"] for r in surgeon.report(model)[0].records)
        print(f"| {config.structure} | {config.basis} | {config.form} | {config.init} | {config.fit_weighting} | {cos.mean():.6f} | "
              f"{cos.min():.6f} | {worst:.2e} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
