"""Peak memory of apply + save (+ load) for a zoo config scaled to ~3 GB of fp32 weights (CPU).

    python bench/memory.py [--hidden 2048 --intermediate 5632 --layers 14 --vocab 32000]

Builds tiny-llama's config at a larger size with seeded random weights, applies
examples/recipes/quickstart.yaml, saves it, and reloads it, printing the peak resident set size of each
phase (Linux ``VmHWM``, reset between phases through ``/proc/self/clear_refs``) as a multiple of the
weight bytes. Target (issue "Product shell"): apply + save ≤ 2× the weight bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import surgeon
from surgeon.zoo import ZOO, randomise_parameters

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "quickstart.yaml"


def peak_rss() -> int:
    """Peak resident set size of this process since the last reset, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss() -> int:
    """Resident set size now, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def build(hidden: int, intermediate: int, layers: int, vocab: int) -> torch.nn.Module:
    """tiny-llama's config scaled up, with seeded random weights, eager attention, eval mode."""
    entry = ZOO["tiny-llama"]
    config = entry.build_config(layers)
    config.hidden_size, config.intermediate_size, config.vocab_size = hidden, intermediate, vocab
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = hidden // 128, hidden // 512, 128
    model = entry.model_class._from_config(config, attn_implementation="eager")
    randomise_parameters(model, seed=0)
    return model.eval()


def main() -> None:
    """Run the phases and print a table of peak RSS per phase."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    base = current_rss()
    rows = []

    def phase(name, fn):
        reset_peak()
        start = time.perf_counter()
        result = fn()
        rows.append((name, time.perf_counter() - start, peak_rss()))
        return result

    model = phase("build", lambda: build(args.hidden, args.intermediate, args.layers, args.vocab))
    weights = sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())
    out = Path(tempfile.mkdtemp(prefix="surgeon-memory-")) / "out"
    try:
        phase("apply", lambda: surgeon.apply(model, RECIPE))
        phase("save", lambda: surgeon.save(model, out))
        model = None  # drop the in-memory model before loading the saved one
        phase("load", lambda: surgeon.load(out))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    print(f"weights: {weights / 1e9:.2f} GB fp32; RSS after imports: {base / 1e9:.2f} GB; "
          f"torch {torch.__version__}, {os.cpu_count()} cores")
    print("| phase | seconds | peak RSS (GB) | peak RSS / weight bytes |")
    print("|---|---|---|---|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.1f} | {peak / 1e9:.2f} | {peak / weights:.2f}× |")
    worst = max(peak for name, _, peak in rows if name in ("apply", "save"))
    verdict = "PASS" if worst <= 2 * weights else "MISS"
    print(f"target apply + save ≤ 2.00× weight bytes: {worst / weights:.2f}× {verdict}")


if __name__ == "__main__":
    main()
