"""Equivalent transforms before W4A4 quantisation of the real all-MiniLM-L6-v2: RTN vs smooth, rotate, flat, ost.

Same data and metrics as examples/quant_minilm.py (even lines calibrate, odd lines evaluate; mean cosine of
mean-pooled sentence embeddings to fp32, and top-1 retrieval agreement). W4A4 here: int4 symmetric
per-channel weights and int4 symmetric per-token activations on every encoder Linear (and the pooler).
MiniLM is post-norm, so every transform is placed at the Linear inputs (online; the inverse folded into
the weights); 384 = 12·32 and 1536 = 12·128 take the order-12 Hadamard factor.

    python examples/equiv_minilm.py [--epochs 5] [--only rotate] [--transform-lr 2e-2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from quant_minilm import DATA, agreement, batches, embed, top1

import surgeon
from surgeon.calibration import find_tokenizer
from surgeon.passes import CalibrateQuant, FakeQuant, Flat, Ost, Rotate, Smooth

torch.set_num_threads(1)

RTN = FakeQuant(weight="int4-sym-channel", input="int4-sym-token")
LEARN = FakeQuant(weight="int4-sym-channel-lwc", input="int4-sym-token-lwc")  # LWC weights, LAC activations


def settings(epochs: int, transform_lr: float):
    """(name, steps) for every row of the study."""
    cal = CalibrateQuant(epochs=epochs, transform_lr=transform_lr)
    return [
        ("RTN", [RTN]),
        ("smooth α=0.5 + RTN", [Smooth(), RTN]),
        ("rotate (Hadamard) + RTN", [Rotate(), RTN]),
        ("LWC+LAC calibrated (no transform)", [LEARN, cal]),
        ("rotate + LWC+LAC calibrated", [Rotate(), LEARN, cal]),
        ("rotate learnable (Cayley) + LWC+LAC calibrated", [Rotate(learnable=True), LEARN, cal]),
        ("flat + LWC+LAC calibrated", [Flat(), LEARN, cal]),
        ("ost + LWC+LAC calibrated", [Ost(), LEARN, cal]),
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--transform-lr", type=float, default=2e-2)
    p.add_argument("--only", default=None, help="run only rows whose name starts with this")
    args = p.parse_args()
    base = surgeon.load_model("minilm")
    tok = find_tokenizer(base)
    lines = [line for line in DATA.read_text().splitlines() if line.strip()]
    calib, evals = batches(tok, lines[0::2]), batches(tok, lines[1::2])
    ref = embed(base, evals)
    ref_top = top1(ref)
    print("| W4A4 method | mean cosine | top-1 agreement | seconds |")
    print("|---|---|---|---|")
    for name, steps in settings(args.epochs, args.transform_lr):
        if args.only and not name.startswith(args.only):
            continue
        t = time.perf_counter()
        model = surgeon.apply(copy.deepcopy(base), steps, calibration=calib)
        cos, agree = agreement(embed(model, evals), ref, ref_top)
        print(f"| {name} | {cos:.4f} | {agree:.3f} | {time.perf_counter() - t:.1f} |", flush=True)


if __name__ == "__main__":
    main()
