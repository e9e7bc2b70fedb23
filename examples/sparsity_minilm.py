"""Activation sparsity on the real all-MiniLM-L6-v2: mean embedding cosine to the dense model.

    python examples/sparsity_minilm.py [--sparsities 0.5] [--plot docs/passes/sparsity_minilm.png]

Embeddings are mean-pooled last hidden states over the attention mask (the sentence-transformers
pooling), compared per sentence with the dense model's by cosine, averaged over held-out sentences.
Thresholds are calibrated on a separate set of sentences. ``random`` zeroes a seeded uniformly random
share of the entries of every Linear input the threshold methods touch (the baseline the papers beat).
"""

from __future__ import annotations

import argparse
import copy

import torch

import surgeon
from surgeon.calibration import tokenize
from surgeon.passes import RSparse, Teal, TopK, Wina

SUBJECTS = ["The river", "A small dog", "My neighbour", "The old library", "This recipe", "The committee",
            "A distant star", "The new phone", "Our teacher", "The storm", "A quiet village", "The market"]
VERBS = ["slowly changed", "surprised everyone with", "was famous for", "struggled with", "celebrated",
         "quietly ignored", "described in detail", "depended on"]
OBJECTS = ["the price of bread", "an unexpected visit", "the morning light", "a broken bridge",
           "the history of science", "a long winter", "the final exam", "a forgotten song"]


def sentences(seed: int, n: int) -> list[str]:
    """``n`` seeded sentences built from the word lists above."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda words: words[int(torch.randint(len(words), (1,), generator=g))]  # noqa: E731
    return [f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}." for _ in range(n)]


def embed(model, batch) -> torch.Tensor:
    """Mean-pooled last hidden state over the attention mask."""
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def random_masking(model, template, sparsity: float, seed: int = 0):
    """The model with a seeded random share ``sparsity`` of every ``template`` Linear input zeroed."""
    paths = [r["module"] for r in surgeon.report(template)[0].records]
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)

    def hook(_m, args):
        keep = (torch.rand(args[0].shape, generator=g) >= sparsity).to(args[0].dtype)
        return (args[0] * keep,)

    for p in paths:
        out.get_submodule(p).register_forward_pre_hook(hook)
    return out


def methods(s: float):
    """Each compared method at sparsity ``s``: (label, configs)."""
    return [("topk (MLP hidden only)", [TopK(sparsity=s)]), ("teal", [Teal(sparsity=s)]),
            ("wina (code: key only)", [Wina(sparsity=s)]), ("wina (all columns)", [Wina(sparsity=s, column_norms="all")]),
            ("rsparse alpha=1", [RSparse(sparsity=s, alpha=1.0)]), ("rsparse alpha=0.8", [RSparse(sparsity=s, alpha=0.8)])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5])
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = surgeon.load_model("minilm").eval()
    calib = [tokenize(base, sentences(1, 32), max_length=32)]
    held = tokenize(base, sentences(2, 64), max_length=32)
    dense = embed(base, held)
    table: dict[str, dict[float, float]] = {}
    for s in args.sparsities:
        teal_model = None
        for label, steps in methods(s):
            model = surgeon.apply(copy.deepcopy(base), steps, calibration=calib)
            if label == "teal":
                teal_model = model
            cos = torch.nn.functional.cosine_similarity(embed(model, held), dense, dim=-1).mean()
            table.setdefault(label, {})[s] = float(cos)
            achieved = [r.get("achieved_sparsity", r.get("dropped_mass")) for r in surgeon.report(model)[0].records]
            print(f"s={s:.2f} {label:24s} cos={float(cos):.4f} sites={len(achieved)} "
                  f"calibration sparsity mean={sum(achieved) / len(achieved):.3f}", flush=True)
        rnd = random_masking(base, teal_model, s)
        cos = torch.nn.functional.cosine_similarity(embed(rnd, held), dense, dim=-1).mean()
        table.setdefault("random", {})[s] = float(cos)
        print(f"s={s:.2f} {'random':24s} cos={float(cos):.4f}", flush=True)
    print("\n| method | " + " | ".join(f"cos @ {s:.0%}" for s in args.sparsities) + " |")
    print("|---|" + "---|" * len(args.sparsities))
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(f"{row[s]:.4f}" for s in args.sparsities) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, row in table.items():
            xs = sorted(row)
            ax.plot(xs, [row[x] for x in xs], marker="o", label=label)
        ax.set_xlabel("target sparsity")
        ax.set_ylabel("mean embedding cosine to dense")
        ax.set_title("all-MiniLM-L6-v2, 64 held-out sentences")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
