"""CPU benchmark: surgeon capture and capture + fold_norm against torch.export, on tiny-llama.

For each layer count it times, on a freshly built model per run (built outside the timer):

* ``capture``       -- ``surgeon.capture(model)``;
* ``fold``          -- ``surgeon.apply(model, [FoldNorm()], certify=False)``: capture, find sites, fold,
                       re-capture to lint (the headline number);
* ``fold_certify``  -- the same with ``certify=True`` (the default);
* ``export``        -- ``torch.export.export(wrapper, (), kwargs, strict=False)``, where the wrapper calls the
                       model with ``use_cache=False, return_dict=True`` (see /work/shared/GROUND.md).

Each cell is one untimed warm-up then the median of N runs (``time.perf_counter``); the four columns take
turns run by run. The table and the target verdicts are printed last; progress goes to stderr.

torch runs with one intra-op thread by default (``--threads 0`` keeps torch's default, 2 on a 2-core
machine). The tensors here are tiny, so a second thread buys nothing, and on a shared machine it costs a
lot: with another process busy on one core, OpenMP's threads wait on each other and capture + fold_norm at
32 layers took ~3.3 s instead of ~0.3 s. Usage::

    python bench/capture.py [--layers 2 8 32 64] [--repeats 5] [--export-repeats 3] [--threads 1]
                            [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import transformers
from torch import nn

import surgeon

TARGET_SECONDS_32 = 0.3
TARGET_SPEEDUP = 10.0
TARGET_SCALING = 2.2


class ExportWrapper(nn.Module):
    """Calls a Hugging Face causal LM with fixed kwargs so torch.export sees plain tensors in and out."""

    def __init__(self, model: nn.Module):
        """Wrap ``model``."""
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the model without a KV cache and return its logits."""
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True
        )
        return out.logits


def run_capture(model: nn.Module) -> None:
    """Capture the model alone."""
    surgeon.capture(model)


def run_fold(model: nn.Module) -> None:
    """Apply fold_norm without certification (capture, find sites, fold, re-capture)."""
    surgeon.apply(model, [surgeon.passes.FoldNorm()], certify=False)


def run_fold_certified(model: nn.Module) -> None:
    """Apply fold_norm with certification (the default)."""
    surgeon.apply(model, [surgeon.passes.FoldNorm()], certify=True)


def run_export(model: nn.Module) -> None:
    """Export the wrapped model with torch.export (non-strict)."""
    wrapper, kwargs = ExportWrapper(model), dict(surgeon.example_inputs(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.export(wrapper, (), kwargs, strict=False)


def time_once(fn, layers: int) -> float:
    """Build a fresh model (untimed) and return the seconds ``fn(model)`` takes."""
    model = surgeon.load_model("tiny-llama", num_layers=layers)
    gc.collect()
    start = time.perf_counter()
    fn(model)
    return time.perf_counter() - start


def benchmark(layer_counts: list[int], repeats: int, export_repeats: int) -> dict[int, dict[str, list[float]]]:
    """Raw timings (seconds) per layer count and column; the columns take turns, so load drift hits all."""
    columns = {
        "capture": (run_capture, repeats),
        "fold": (run_fold, repeats),
        "fold_certify": (run_fold_certified, repeats),
        "export": (run_export, export_repeats),
    }
    raw: dict[int, dict[str, list[float]]] = {}
    for layers in layer_counts:
        raw[layers] = {name: [] for name in columns}
        for fn, _ in columns.values():
            time_once(fn, layers)  # warm-up
        for i in range(max(repeats, export_repeats)):
            for name, (fn, n) in columns.items():
                if i < n:
                    raw[layers][name].append(time_once(fn, layers))
        summary = "  ".join(f"{k} {statistics.median(v):.3f}" for k, v in raw[layers].items())
        print(f"  {layers:>3} layers  medians (s): {summary}", file=sys.stderr, flush=True)
    return raw


def medians(raw: dict[int, dict[str, list[float]]]) -> dict[int, dict[str, float]]:
    """Median of each list of timings."""
    return {n: {k: statistics.median(v) for k, v in cols.items()} for n, cols in raw.items()}


def table(med: dict[int, dict[str, float]], repeats: int, export_repeats: int) -> str:
    """The markdown results table."""
    lines = [
        "| layers | capture (s) | capture+fold (s) | capture+fold+certify (s) | torch.export (s) | export / (capture+fold) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, m in med.items():
        lines.append(
            f"| {n} | {m['capture']:.3f} | **{m['fold']:.3f}** | {m['fold_certify']:.3f} "
            f"| {m['export']:.3f} | {m['export'] / m['fold']:.1f}× |"
        )
    lines.append("")
    lines.append(f"Medians of {repeats} runs (export: {export_repeats}), after one warm-up run per cell; "
                 f"fresh model per run; torch threads: {torch.get_num_threads()}.")
    if 32 in med and 64 in med:
        lines.append(f"time(64)/time(32), capture+fold: {med[64]['fold'] / med[32]['fold']:.2f}; "
                     f"capture alone: {med[64]['capture'] / med[32]['capture']:.2f}; "
                     f"with certify: {med[64]['fold_certify'] / med[32]['fold_certify']:.2f}")
    return "\n".join(lines)


def verdicts(med: dict[int, dict[str, float]]) -> str:
    """One line with each target and PASS/MISS (n/a when the needed layer counts were not run)."""

    def mark(ok: bool | None) -> str:
        """PASS, MISS or n/a."""
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    t32 = med[32]["fold"] if 32 in med else None
    ratios = {n: m["export"] / m["fold"] for n, m in med.items()}
    worst = min(ratios, key=ratios.get)
    scaling = med[64]["fold"] / med[32]["fold"] if 32 in med and 64 in med else None
    parts = [
        f"32 layers ≤ {TARGET_SECONDS_32} s: "
        + (f"{t32:.3f} s {mark(t32 <= TARGET_SECONDS_32)}" if t32 is not None else "n/a"),
        f"≥ {TARGET_SPEEDUP:.0f}× faster than torch.export: "
        + (f"at 32 layers {ratios[32]:.1f}× {mark(ratios[32] >= TARGET_SPEEDUP)}, " if 32 in ratios else "")
        + f"at every size (worst {ratios[worst]:.1f}× at {worst} layers) {mark(ratios[worst] >= TARGET_SPEEDUP)}",
        f"time(64)/time(32) ≤ {TARGET_SCALING}: "
        + (f"{scaling:.2f} {mark(scaling <= TARGET_SCALING)}" if scaling is not None else "n/a"),
    ]
    return "Targets (capture+fold, certify=False): " + "; ".join(parts)


def main() -> None:
    """Parse options, run the benchmark, print the table and verdicts, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per surgeon cell")
    parser.add_argument("--export-repeats", type=int, default=3, help="timed runs per torch.export cell")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default); see the module docstring")
    parser.add_argument("--json", metavar="PATH", help="write raw timings and environment here")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }
    print(f"tiny-llama, CPU, {env}", file=sys.stderr)
    start = time.perf_counter()
    raw = benchmark(args.layers, args.repeats, args.export_repeats)
    med = medians(raw)
    env["loadavg_end"] = os.getloadavg()
    print(f"total wall time {time.perf_counter() - start:.1f} s; load average at end {env['loadavg_end']}",
          file=sys.stderr)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "repeats": args.repeats, "export_repeats": args.export_repeats,
                       "raw_seconds": raw, "median_seconds": med}, f, indent=2)
    print(table(med, args.repeats, args.export_repeats))
    print()
    print(verdicts(med))


if __name__ == "__main__":
    main()
