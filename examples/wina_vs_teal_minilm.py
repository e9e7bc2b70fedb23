"""Why WINA's column-norm weighting barely changes TEAL's masks on MiniLM.

    python examples/wina_vs_teal_minilm.py

For every encoder Linear of all-MiniLM-L6-v2 this prints, averaged per projection kind: the spread of
the weight's column norms ‖W[:, i]‖ (coefficient of variation), the spread of input magnitudes |x_i|
within a token, and the share of entries on which TEAL's mask (|x_i| above the 50 % quantile) and WINA's
(|x_i|·‖W[:, i]‖ above its 50 % quantile) agree, on 32 sentences of examples/data/sentences.txt.
"""

from __future__ import annotations

from pathlib import Path

import torch

import surgeon
from surgeon.calibration import collect_inputs, find_tokenizer

DATA = Path(__file__).parent / "data" / "sentences.txt"


def half_mask(score: torch.Tensor) -> torch.Tensor:
    """Entries above the median score (what a 50 % magnitude mask keeps)."""
    return score > score.flatten().kthvalue(score.numel() // 2).values


def main() -> None:
    """Print one row per projection kind."""
    torch.set_num_threads(1)
    model = surgeon.load_model("minilm")
    tok = find_tokenizer(model)
    lines = [line for line in DATA.read_text().splitlines() if line.strip()][:32]
    enc = tok(lines, padding=True, truncation=True, max_length=64, return_tensors="pt")
    batch = [{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}]
    paths = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" in n]
    inputs = collect_inputs(model, paths, batch, drop_padding=True)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for path in paths:
        x = inputs[path].abs()
        norms = model.get_submodule(path).weight.detach().norm(dim=0)
        agree = float((half_mask(x) == half_mask(x * norms)).float().mean())
        cv_w = float(norms.std() / norms.mean())
        cv_x = float((x.std(dim=1) / x.mean(dim=1)).mean())
        rows.setdefault(path.split(".", 3)[-1], []).append((cv_w, cv_x, agree))
    print("| projection | CV of column norms | CV of input magnitudes per token | TEAL/WINA mask agreement at 50 % |")
    print("|---|---|---|---|")
    for kind, vals in rows.items():
        mean = [sum(v[i] for v in vals) / len(vals) for i in range(3)]
        print(f"| {kind} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |")


if __name__ == "__main__":
    main()
