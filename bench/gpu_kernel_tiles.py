"""Tile-size sweep for the fake-quant (static g128, dynamic per-token) and rational backward kernels.

    PYTHONPATH=. python bench/gpu_kernel_tiles.py

Prints median µs per variant (do_bench) at 8192×14336 bf16, to choose the kernels' defaults.
"""

from __future__ import annotations


import torch
import triton

import kernels.group_rational.triton_kernel as rational
from kernels.fake_quant.triton_kernel import fake_quant_forward


def bench(fn) -> float:
    """Median µs."""
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median") * 1e3


def main() -> None:
    """Time each variant once and print a line per variant."""
    x = torch.randn(8192, 14336, device="cuda", dtype=torch.bfloat16)
    print(f"clone {bench(lambda: x.clone()):.1f}")
    scale = (x.float().reshape(8192, -1, 128).abs().amax(-1) / 7).contiguous()
    zero = torch.zeros_like(scale)
    for bm in (4, 8, 16, 32, 64):
        print(f"fake-quant g128 block_m={bm}: {bench(lambda: fake_quant_forward(x, scale, zero, 128, -8, 7, block_m=bm)):.1f}")
    a = torch.randn(6, device="cuda") * 0.3
    b = torch.randn(8, 4, device="cuda") * 0.3
    for rows in (64, 128, 256, 512):
        for bm, bn in ((8, 128), (4, 256), (8, 256), (16, 64)):
            rational.BACKWARD_ROWS = rows
            t = bench(lambda: rational.group_rational_backward(x, x, a, b, block_m=bm, block_n=bn))
            print(f"rational bwd rows={rows} block={bm}x{bn}: {t:.1f}")


if __name__ == "__main__":
    main()
