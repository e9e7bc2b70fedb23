"""GR-KAN MLP forward on the GPU against its two GEMMs alone (issue target: ≤ 1.05×), one run.

    PYTHONPATH=. python3 bench/gpu_grkan_mlp.py [--tokens 8192] [--d 4096] [--dff 11008] [--out r.json]

KAT's MLP is x → F1 → fc1 → F2 → fc2 with F1, F2 group-rational (8 groups). Timed (bf16, medians of
``triton.testing.do_bench``): the two GEMMs alone (``F.linear`` twice), the MLP with surgeon's Triton
rational kernel around them, the eager torch reference of the same MLP, and ``torch.compile`` of it.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton

from kernels.group_rational.reference import group_rational_reference
from kernels.group_rational.triton_kernel import group_rational_forward

GROUPS = 8


def bench(fn) -> float:
    """Median microseconds of ``fn``."""
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--dff", type=int, default=11008)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(args.tokens, args.d, device=dev, dtype=dt)
    w1 = torch.randn(args.dff, args.d, device=dev, dtype=dt) / args.d**0.5
    w2 = torch.randn(args.d, args.dff, device=dev, dtype=dt) / args.dff**0.5
    a1, a2 = (torch.randn(6, device=dev) * 0.3 for _ in range(2))
    b1, b2 = (torch.randn(GROUPS, 4, device=dev) * 0.3 for _ in range(2))

    def gemms():
        return F.linear(F.linear(x, w1), w2)

    def lowered():
        h = F.linear(group_rational_forward(x, a1, b1), w1)
        return F.linear(group_rational_forward(h, a2, b2), w2)

    def eager():
        h = F.linear(group_rational_reference(x, a1, b1), w1)
        return F.linear(group_rational_reference(h, a2, b2), w2)

    compiled = torch.compile(eager, dynamic=False)
    with torch.no_grad():
        want, got = eager().float(), lowered().float()
        err = float((got - want).norm() / want.norm())
        times = {name: bench(fn) for name, fn in
                 (("two GEMMs alone", gemms), ("GR-KAN MLP, Triton rationals", lowered),
                  ("GR-KAN MLP, eager", eager), ("GR-KAN MLP, torch.compile", compiled))}
    base = times["two GEMMs alone"]
    rows = [{"case": k, "us": v, "x_gemms": v / base} for k, v in times.items()]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "shape": vars(args), "rel_err": err, "rows": rows}, f, indent=2)
    print(f"GR-KAN MLP {args.tokens}×{args.d}→{args.dff}→{args.d} bf16 on {torch.cuda.get_device_name()}, "
          f"rel.err lowered vs eager {err:.1e}")
    print("| case | µs | × two GEMMs |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['us']:.0f} | {r['x_gemms']:.3f} |")


if __name__ == "__main__":
    main()
