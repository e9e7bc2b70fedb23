"""MoHD of the real all-MiniLM-L6-v2: embedding cosine to the dense model vs share of FFN FLOPs.

For each (num_shared S, top_k k) setting at G = --groups groups, ``mohd`` is applied to every FFN with
calibration on the first half of examples/data/experts_sentences.txt and evaluated on the other half
(the data and metric of examples/moefy_minilm.py): mean over evaluation sentences of the cosine between
mean-pooled token embeddings of the converted and the dense model. FLOP share: the converted FFNs'
multiply-adds per token (router, shared and chosen groups, fusion term) over the dense FFNs', counted
from the layer sizes (``MohdFFN.flops_per_token``); the script uses ``dispatch="masked"`` (the same
function, tested equal) because it is faster on CPU (``--dispatch gather`` runs the other path). A second
table ablates activation scaling and group fusion at one setting; ``--setting S K`` (repeatable) runs only
those rows.

    python examples/mohd_minilm.py --groups 16 --json /tmp/mohd_minilm.json

``--spaces`` instead compares, per FFN on the calibration half, where the sub-dimensions could be taken:
the FFN input (the paper's hidden dimension) or the FFN hidden units. It prints the share of a token's
energy (Σ squares) in its top 25 % / 50 % units, the share in one fixed set of 12.5 % of units (those
most often in a token's top 10 %: the "shared" candidates), and the FFN's relative output error when each
token keeps only its own top 25 % / 50 % units (an oracle router):

    python examples/mohd_minilm.py --spaces

``--finetune STEPS`` instead converts at each ``--setting S K`` and then trains every MohdFFN parameter
except the router (group weights, scale, fusion means; the rest of the model frozen) for STEPS Adam steps
(lr ``--lr``) on the calibration half, loss = mean (1 − cosine) of the pooled embeddings to the dense
model's; it prints the evaluation-half cosine before and after:

    python examples/mohd_minilm.py --finetune 60 --setting 2 6 --setting 0 4
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from moefy_minilm import DATA, embed  # same directory

import surgeon
from surgeon.calibration import tokenize
from surgeon.passes import Mohd, MohdFFN
from surgeon.runner import call_kwargs

SETTINGS = [(0, 4), (2, 2), (0, 6), (2, 4), (4, 2), (0, 8), (2, 6), (4, 4), (0, 12), (4, 8)]
ABLATION = [("none", "none"), ("ratio", "none"), ("fitted", "none"), ("none", "mean"), ("ratio", "mean"),
            ("fitted", "mean")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--ablate", type=int, nargs=2, default=[2, 6], metavar=("S", "K"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--spaces", action="store_true", help="compare input vs hidden sub-dimensions and exit")
    parser.add_argument("--finetune", type=int, default=0, metavar="STEPS")
    parser.add_argument("--setting", type=int, nargs=2, action="append", metavar=("S", "K"))
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dispatch", choices=["masked", "gather"], default="masked")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [s for s in DATA.read_text().splitlines() if s.strip()]
    calib_lines, eval_lines = lines[: len(lines) // 2], lines[len(lines) // 2:]
    dense = surgeon.load_model("minilm").eval()
    calibration = [tokenize(dense, calib_lines[i:i + 10]) for i in range(0, len(calib_lines), 10)]
    evaluation = [tokenize(dense, eval_lines[i:i + 10]) for i in range(0, len(eval_lines), 10)]
    if args.spaces:
        compare_spaces(dense, calibration)
        return
    reference = embed(dense, evaluation)
    if args.finetune:
        for s, k in args.setting or [(2, 6)]:
            finetune(dense, calibration, evaluation, reference, args.groups, s, k, args.finetune, args.lr)
        return
    runs = [(s, k, "fitted", "mean", "main") for s, k in args.setting or SETTINGS]
    if not args.setting:  # --setting alone: just those rows
        runs += [(args.ablate[0], args.ablate[1], sc, fu, "ablation") for sc, fu in ABLATION]
        runs.append((2, args.groups - 2, "fitted", "mean", "exact"))
    rows = []
    for s, k, scaling, fusion, table in runs:
        t0 = time.time()
        model = surgeon.apply(copy.deepcopy(dense), [Mohd(num_groups=args.groups, num_shared=s, top_k=k,
                                                          scaling=scaling, fusion=fusion, dispatch=args.dispatch)],
                              calibration=calibration)
        blocks = [m for m in model.modules() if isinstance(m, MohdFFN)]
        cos = torch.nn.functional.cosine_similarity(embed(model, evaluation), reference, dim=-1)
        share = sum(m.flops_per_token() for m in blocks) / sum(m.dense_flops_per_token() for m in blocks)
        scales = [float(m.scale.detach()) for m in blocks]
        row = {"table": table, "G": args.groups, "S": s, "k": k, "scaling": scaling, "fusion": fusion,
               "flop_share": share, "mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
               "scales": scales, "worst_error": surgeon.report(model)[0].worst_error}
        rows.append(row)
        print(f"{table:8s} S={s} k={k:2d} {scaling:6s} {fusion:4s} flops={share:.3f} cos={cos.mean():.4f} "
              f"(min {cos.min():.4f}) scale={min(scales):.3f}..{max(scales):.3f} [{time.time() - t0:.0f}s]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def finetune(dense, calibration, evaluation, reference, groups, s, k, steps, lr) -> None:
    """Convert at (S, k), then distill the pooled embeddings into the MohdFFN parameters (router frozen)."""
    model = surgeon.apply(copy.deepcopy(dense), [Mohd(num_groups=groups, num_shared=s, top_k=k, dispatch="masked")],
                          calibration=calibration)
    blocks = [m for m in model.modules() if isinstance(m, MohdFFN)]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for b in blocks for n, p in b.named_parameters() if not n.startswith("router")]
    for p in params:
        p.requires_grad_(True)
    share = sum(m.flops_per_token() for m in blocks) / sum(m.dense_flops_per_token() for m in blocks)
    with torch.no_grad():
        targets = [embed(dense, [b]) for b in calibration]
        before = torch.nn.functional.cosine_similarity(embed(model, evaluation), reference, dim=-1)
    opt = torch.optim.Adam(params, lr=lr)
    t0 = time.time()
    for step in range(steps):
        batch, target = calibration[step % len(calibration)], targets[step % len(calibration)]
        hidden = model(**call_kwargs(model, batch)).last_hidden_state  # with gradients (run_model has none)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        loss = (1 - torch.nn.functional.cosine_similarity(pooled, target, dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(embed(model, evaluation), reference, dim=-1)
    print(f"finetune S={s} k={k:2d} flops={share:.3f} steps={steps} lr={lr:g}: eval cos {before.mean():.4f} "
          f"(min {before.min():.4f}) -> {after.mean():.4f} (min {after.min():.4f}), last train loss "
          f"{float(loss.detach()):.4f} [{time.time() - t0:.0f}s]", flush=True)


def _energy(a: torch.Tensor) -> tuple[float, float, float]:
    """Mean per-token energy share in its top 25 % / 50 % units, and in the fixed 12.5 % most often hot."""
    e = a.pow(2) / a.pow(2).sum(1, keepdim=True)
    n = a.shape[1]
    cum = e.sort(1, descending=True).values.cumsum(1)
    hot = (a.abs() >= a.abs().topk(max(1, n // 10), 1).values[:, -1:]).double().mean(0)
    fixed = e[:, hot.topk(n // 8).indices].sum(1)
    return float(cum[:, n // 4 - 1].mean()), float(cum[:, n // 2 - 1].mean()), float(fixed.mean())


def _top(a: torch.Tensor, frac: float) -> torch.Tensor:
    """0/1 mask of each row's top ``frac`` entries by magnitude."""
    return (a.abs() >= a.abs().topk(int(a.shape[1] * frac), 1).values[:, -1:]).to(a.dtype)


def compare_spaces(model, calibration) -> None:
    """Print, per FFN, energy concentration and oracle top-k error for input dims vs hidden units."""
    from surgeon.calibration import collect_inputs
    from surgeon.passes.experts.sites import ffn_sites

    sites, _ = ffn_sites(surgeon.capture(model))
    xs = collect_inputs(model, [s.mlp.up for s in sites], calibration, dtype=torch.float32, drop_padding=True)
    print("layer | input x: top25% top50% fixed12.5% | hidden h: top25% top50% fixed12.5% | "
          "oracle err keep 25%: input hidden | keep 50%: input hidden")
    with torch.no_grad():
        for i, s in enumerate(sites):
            up, act, down = (model.get_submodule(p) for p in (s.mlp.up, s.mlp.act, s.mlp.down))
            x = xs[s.mlp.up]
            h = act(up(x))
            y = down(h)
            errs = []
            for frac in (0.25, 0.5):
                errs += [float((down(act(up(x * _top(x, frac)))) - y).norm() / y.norm()),
                         float((down(h * _top(h, frac)) - y).norm() / y.norm())]
            cols = [" ".join(f"{v:.3f}" for v in vals) for vals in (_energy(x), _energy(h), errs)]
            print(f"{i} | " + " | ".join(cols), flush=True)


if __name__ == "__main__":
    main()
