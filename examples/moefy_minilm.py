"""MoEfication of the real all-MiniLM-L6-v2: embedding cosine to the dense model vs share of FFN FLOPs.

For E in --experts, each clustering (weights, coactivation) and router (linear, centroid), ``moefy`` is
applied once with top_k = E (which the pass certifies exact), then the routed block's ``top_k`` is set to
1..E. Calibration: the first half of examples/data/experts_sentences.txt; evaluation: the other half.
Metric: mean over evaluation sentences of the cosine between mean-pooled token embeddings of the
converted and the dense model. FLOP share: the routed FFNs' multiply-adds per token (router + k experts)
over the dense FFNs', counted from the layer sizes: the default ``gather`` dispatch executes exactly
those; this script uses ``dispatch="masked"`` (the same function, tested equal) because it is faster on CPU.

    python examples/moefy_minilm.py --experts 8 16 --plot docs/passes/experts_moefy_minilm.png
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import surgeon
from surgeon.calibration import tokenize
from surgeon.passes import ExpertFFN, Moefy
from surgeon.runner import run_model

DATA = Path(__file__).parent / "data" / "experts_sentences.txt"


def embed(model, batches) -> torch.Tensor:
    """Mean-pooled last hidden states (the sentence-transformers pooling of MiniLM)."""
    out = []
    for batch in batches:
        hidden = run_model(model, batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [s for s in DATA.read_text().splitlines() if s.strip()]
    calib_lines, eval_lines = lines[: len(lines) // 2], lines[len(lines) // 2:]
    dense = surgeon.load_model("minilm").eval()
    calibration = [tokenize(dense, calib_lines[i:i + 10]) for i in range(0, len(calib_lines), 10)]
    evaluation = [tokenize(dense, eval_lines[i:i + 10]) for i in range(0, len(eval_lines), 10)]
    reference = embed(dense, evaluation)
    rows = []
    for e in args.experts:
        for clustering in ("weights", "coactivation"):
            for router in ("linear", "centroid"):
                model = surgeon.apply(copy.deepcopy(dense), [Moefy(num_experts=e, top_k=e, clustering=clustering,
                                                                   router=router, dispatch="masked")],
                                      calibration=calibration)
                exact_error = surgeon.report(model)[0].worst_error
                experts = [m for m in model.modules() if isinstance(m, ExpertFFN)]
                for k in range(1, e + 1):
                    for m in experts:
                        m.top_k = k
                    cos = torch.nn.functional.cosine_similarity(embed(model, evaluation), reference, dim=-1)
                    share = sum(m.flops_per_token() for m in experts) / sum(m.dense_flops_per_token() for m in experts)
                    rows.append({"E": e, "k": k, "clustering": clustering, "router": router,
                                 "flop_share": share, "mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
                                 "k_eq_E_certified_error": exact_error})
                    print(f"E={e:2d} k={k:2d} {clustering:12s} {router:8s} flops={share:.3f} "
                          f"cos={cos.mean():.4f} (min {cos.min():.4f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.experts, args.plot)


def plot(rows, experts, path: Path) -> None:
    """One panel per E: mean cosine against FLOP share, a line per clustering × router."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(experts), figsize=(5.5 * len(experts), 4), squeeze=False)
    for ax, e in zip(axes[0], experts):
        for clustering in ("weights", "coactivation"):
            for router in ("linear", "centroid"):
                pts = [r for r in rows if r["E"] == e and r["clustering"] == clustering and r["router"] == router]
                ax.plot([r["flop_share"] for r in pts], [r["mean_cos"] for r in pts], marker="o", ms=3,
                        label=f"{clustering} + {router}")
        ax.set(title=f"MiniLM moefy, E = {e}", xlabel="share of dense FFN FLOPs executed",
               ylabel="mean embedding cosine to dense")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
