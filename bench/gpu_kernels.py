"""GPU benchmark of surgeon's Triton kernels, side by side with torch.clone, eager and torch.compile.

    PYTHONPATH=. python bench/gpu_kernels.py [--shapes 8192x4096 8192x14336] [--out results.json]

For each kernel and shape (bf16): median µs by ``triton.testing.do_bench``, logical GB/s (bytes the
operation must read and write once), and the ratios to ``torch.clone`` of the largest operand, to the
eager torch reference and to ``torch.compile`` of that same reference, all measured in this one run.
Imports the kernels as the top-level ``kernels`` package so it runs where surgeon is not installed. (No
script here may be named ``kernels.py``: transformers probes for a package of that name, and a script
in this folder would answer.)
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton

from kernels.fake_quant.reference import fake_quant_dynamic_reference, fake_quant_reference
from kernels.fake_quant.triton_kernel import fake_quant_dynamic_forward, fake_quant_forward
from kernels.group_rational.reference import group_rational_reference
from kernels.group_rational.triton_kernel import group_rational_backward, group_rational_forward

GROUPS = 8


def bench(fn) -> float:
    """Median microseconds of ``fn`` (CUDA events, after warm-up)."""
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median") * 1e3


def rational_cases(x):
    """(name, bytes, triton fn, eager fn, compiled fn, check) for the group-rational kernels."""
    a = torch.randn(6, device=x.device) * 0.3
    b = torch.randn(GROUPS, 4, device=x.device) * 0.3
    g = torch.randn_like(x)
    compiled = torch.compile(group_rational_reference, dynamic=False)
    nbytes = 2 * x.numel() * x.element_size()

    def eager_train():
        xx = x.detach().requires_grad_()
        aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
        group_rational_reference(xx, aa, bb).backward(g)

    def compiled_train():
        xx = x.detach().requires_grad_()
        aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
        compiled(xx, aa, bb).backward(g)

    def triton_train():
        group_rational_forward(x, a, b)
        group_rational_backward(g, x, a, b)

    def check():
        want = group_rational_reference(x.float(), a, b)
        got = group_rational_forward(x, a, b).float()
        return float((got - want).norm() / want.norm())

    yield "rational fwd", nbytes, lambda: group_rational_forward(x, a, b), \
        lambda: group_rational_reference(x, a, b), lambda: compiled(x, a, b), check
    # forward + backward moves x and y, then x, g and dx: five tensors of x's size.
    yield "rational fwd+bwd", 5 * x.numel() * x.element_size(), triton_train, eager_train, compiled_train, check


def quant_cases(x):
    """The fake-quant kernels: static per-group(128) int4 scales, and dynamic per-token int8."""
    rows, width = x.shape
    scale = (x.float().reshape(rows, -1, 128).abs().amax(-1) / 7).contiguous()
    zero = torch.zeros_like(scale)
    static_ref = torch.compile(fake_quant_reference, dynamic=False)
    dyn_ref = torch.compile(fake_quant_dynamic_reference, dynamic=False)
    nbytes = 2 * x.numel() * x.element_size()

    def check_static():
        want = fake_quant_reference(x, scale, zero, 128, -8, 7).float()
        got = fake_quant_forward(x, scale, zero, 128, -8, 7).float()
        return float((got - want).norm() / want.norm())

    def check_dynamic():
        want = fake_quant_dynamic_reference(x, width, 8).float()
        got = fake_quant_dynamic_forward(x, width, 8).float()
        return float((got - want).norm() / want.norm())

    yield "fake-quant int4 g128 fwd", nbytes, lambda: fake_quant_forward(x, scale, zero, 128, -8, 7), \
        lambda: fake_quant_reference(x, scale, zero, 128, -8, 7), \
        lambda: static_ref(x, scale, zero, 128, -8, 7), check_static
    yield "fake-quant int8 per-token fwd", nbytes, lambda: fake_quant_dynamic_forward(x, width, 8), \
        lambda: fake_quant_dynamic_reference(x, width, 8), lambda: dyn_ref(x, width, 8), check_dynamic


def sweep_rational_blocks(x) -> list[dict]:
    """Forward time of the rational kernel for a few tile shapes (to choose the defaults)."""
    a = torch.randn(6, device=x.device)
    b = torch.randn(GROUPS, 4, device=x.device)
    rows = []
    for bm, bn in [(16, 128), (32, 128), (64, 128), (32, 256), (64, 256), (128, 64)]:
        t = bench(lambda: group_rational_forward(x, a, b, block_m=bm, block_n=bn))
        tb = bench(lambda: group_rational_backward(x, x, a, b, block_m=bm, block_n=bn))
        rows.append({"block_m": bm, "block_n": bn, "fwd_us": t, "bwd_us": tb})
    return rows


def main() -> None:
    """Run every kernel at every shape; print a table; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["8192x4096", "8192x14336"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true", help="also time a few rational tile shapes")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "rows": [], "sweep": {}}
    for shape in args.shapes:
        rows, width = map(int, shape.split("x"))
        x = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
        clone_us = bench(lambda: x.clone())
        if args.sweep:
            results["sweep"][shape] = sweep_rational_blocks(x)
        for cases in (rational_cases(x), quant_cases(x)):
            for name, nbytes, fast, eager, compiled, check in cases:
                row = {"kernel": name, "shape": shape, "clone_us": clone_us, "error": check()}
                row["triton_us"], row["eager_us"], row["compile_us"] = bench(fast), bench(eager), bench(compiled)
                row["gbps"] = nbytes / row["triton_us"] / 1e3
                results["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"{results['gpu']}, torch {results['torch']}, triton {results['triton']}, bf16, medians of do_bench")
    print("| kernel | shape | µs | GB/s | ×clone | eager/triton | compile/triton | rel.err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['kernel']} | {r['shape']} | {r['triton_us']:.1f} | {r['gbps']:.0f} | "
              f"{r['triton_us'] / r['clone_us']:.2f} | {r['eager_us'] / r['triton_us']:.1f} | "
              f"{r['compile_us'] / r['triton_us']:.2f} | {r['error']:.1e} |")
    for shape, sweep in results["sweep"].items():
        best = min(sweep, key=lambda s: s["fwd_us"])
        bestb = min(sweep, key=lambda s: s["bwd_us"])
        print(f"rational tiles at {shape}: best fwd {best['block_m']}x{best['block_n']} {best['fwd_us']:.1f} µs; "
              f"best bwd {bestb['block_m']}x{bestb['block_n']} {bestb['bwd_us']:.1f} µs")


if __name__ == "__main__":
    main()
