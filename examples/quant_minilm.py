"""Quantise the real all-MiniLM-L6-v2 with ``fake_quant`` (+ ``calibrate_quant``) and compare to fp32.

Sentences: examples/data/sentences.txt (200 lines); even lines calibrate, odd lines evaluate (disjoint).
Metrics on the evaluation sentences: mean cosine between each sentence's fp32 and quantised embedding
(mean pooling over real tokens, as sentence-transformers does), and top-1 retrieval agreement (for each
sentence, whether its nearest other sentence is the same under fp32 and under the quantised model).

    python examples/quant_minilm.py [--epochs 5] [--lr 0.05] [--step-lr 0.01] [--only W4A16] [--asq-start]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import surgeon
from surgeon.calibration import find_tokenizer
from surgeon.passes import CalibrateQuant, FakeQuant

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data" / "sentences.txt"
BATCH = 10

# name -> (RTN config, {calibrated variant: config})
SETTINGS = {
    "W8A8": (FakeQuant(weight="int8-sym-channel", input="int8-sym-token"), {}),
    "W4A16 g128": (FakeQuant(weight="int4-asym-g128", input="none"),
                   {"LWC": FakeQuant(weight="int4-asym-g128-lwc", input="none")}),
    "W4A8": (FakeQuant(weight="int4-asym-channel", input="int8-asym-token"),
             {"LWC+LSQ": FakeQuant(weight="int4-asym-channel-lwc", input="int8-asym-channel-lsq"),
              "LWC+ASQ sym": FakeQuant(weight="int4-asym-channel-lwc", input="int8-sym-token-asq"),
              "LWC+ASQ asym": FakeQuant(weight="int4-asym-channel-lwc", input="int8-asym-token-asq")}),
    "W4A4": (FakeQuant(weight="int4-asym-channel", input="int4-asym-token"),
             {"LWC+LSQ": FakeQuant(weight="int4-asym-channel-lwc", input="int4-asym-channel-lsq"),
              "LWC+ASQ sym": FakeQuant(weight="int4-asym-channel-lwc", input="int4-sym-token-asq"),
              "LWC+ASQ asym": FakeQuant(weight="int4-asym-channel-lwc", input="int4-asym-token-asq")}),
}


def batches(tok, lines):
    """Tokenised batches of BATCH sentences."""
    out = []
    for i in range(0, len(lines), BATCH):
        enc = tok(lines[i:i + BATCH], padding=True, truncation=True, max_length=64, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


@torch.no_grad()
def embed(model, data):
    """L2-normalised mean-pooled sentence embeddings."""
    rows = []
    for b in data:
        h = model(**b).last_hidden_state
        m = b["attention_mask"][..., None].float()
        rows.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(rows)


def top1(e):
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    return sim.argmax(1)


def agreement(e: torch.Tensor, ref: torch.Tensor, ref_top: torch.Tensor) -> tuple[float, float]:
    """(mean cosine to the fp32 embeddings, top-1 retrieval agreement) of embeddings ``e``."""
    return float((e * ref).sum(1).mean()), float((top1(e) == ref_top).float().mean())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=None, help="calibrate_quant's lr (default: the pass default)")
    p.add_argument("--step-lr", type=float, default=None, help="calibrate_quant's step_lr")
    p.add_argument("--only", default=None, help="run only settings whose name starts with this")
    p.add_argument("--asq-start", action="store_true",
                   help="W4A4 only: sym per-token RTN and ASQ before calibration (they should agree)")
    args = p.parse_args()
    rates = {k: v for k, v in (("lr", args.lr), ("step_lr", args.step_lr)) if v is not None}
    if args.asq_start:
        settings = {"W4A4": (FakeQuant(weight="int4-asym-channel", input="int4-sym-token"),
                             {"ASQ sym, not calibrated": FakeQuant(weight="int4-asym-channel",
                                                                   input="int4-sym-token-asq")})}
    else:
        settings = SETTINGS
    base = surgeon.load_model("minilm")
    tok = find_tokenizer(base)
    lines = [l for l in DATA.read_text().splitlines() if l.strip()]
    calib, evals = batches(tok, lines[0::2]), batches(tok, lines[1::2])
    ref = embed(base, evals)
    ref_top = top1(ref)
    print("| setting | method | mean cosine | top-1 agreement | seconds |")
    print("|---|---|---|---|---|")
    for name, (rtn, calibrated) in settings.items():
        if args.only and not name.startswith(args.only):
            continue
        runs = [("RTN", [rtn])] + [(k, [c] if args.asq_start else [c, CalibrateQuant(epochs=args.epochs, **rates)])
                                   for k, c in calibrated.items()]
        for method, steps in runs:
            t = time.perf_counter()
            model = surgeon.apply(copy.deepcopy(base), steps, calibration=calib)
            cos, agree = agreement(embed(model, evals), ref, ref_top)
            print(f"| {name} | {method} | {cos:.4f} | {agree:.3f} | {time.perf_counter() - t:.1f} |", flush=True)


if __name__ == "__main__":
    main()
