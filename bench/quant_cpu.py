"""Calibration cost of block-wise quantiser reconstruction on the real MiniLM (CPU).

    python bench/quant_cpu.py [--samples 128] [--epochs 5] [--threads 1]

Inserts W4A8 fake-quant (int4 per-channel weights with LWC, int8 per-channel LSQ activations) into
all-MiniLM-L6-v2, then runs ``calibrate_quant`` on ``--samples`` sentences from examples/data/sentences.txt
(cycled if fewer), and prints the wall time and the peak resident memory of each phase (Linux ``VmHWM``,
reset between phases), with the model's weight bytes for scale.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import surgeon
from surgeon.calibration import find_tokenizer
from surgeon.passes import CalibrateQuant, FakeQuant

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "sentences.txt"
BATCH = 16


def peak_rss() -> int:
    """Peak resident set size since the last reset, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM to the current resident set size."""
    Path("/proc/self/clear_refs").write_text("5")


def calibration_batches(model, samples: int) -> list[dict]:
    """``samples`` sentences, tokenised in batches of BATCH."""
    lines = [line.strip() for line in DATA.read_text().splitlines() if line.strip()]
    lines = (lines * (samples // len(lines) + 1))[:samples]
    tok = find_tokenizer(model)
    out = []
    for i in range(0, samples, BATCH):
        enc = tok(lines[i : i + BATCH], padding=True, truncation=True, max_length=64, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def main() -> None:
    """Run fake_quant, then calibrate_quant, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = surgeon.load_model("minilm")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = calibration_batches(model, args.samples)
    rows = []
    for name, step in (("fake_quant", FakeQuant(weight="int4-asym-channel-lwc", input="int8-asym-channel-lsq")),
                       ("calibrate_quant", CalibrateQuant(epochs=args.epochs))):
        reset_peak()
        start = time.perf_counter()
        surgeon.apply(model, [step], calibration=batches)
        rows.append((name, time.perf_counter() - start, peak_rss()))
    print(f"MiniLM ({weights / 1e6:.1f} MB fp32 weights), {args.samples} samples in batches of {BATCH}, "
          f"{args.epochs} epochs, torch {torch.__version__}, {args.threads} thread(s)")
    print("| phase | seconds | peak RSS (MB) |")
    print("|---|---|---|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.1f} | {peak / 1e6:.0f} |")


if __name__ == "__main__":
    main()
