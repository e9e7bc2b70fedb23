"""Block-Hadamard + int8 per-token quantisation in plain torch: the specification of the Triton kernel.

For x (N, D) and a power-of-two block B dividing D (16 ≤ B ≤ 128), each run of B channels is rotated by
the normalised Sylvester Hadamard matrix, y = x_blk · H_B · (1/√B) (H_B[i, j] = (−1)^popcount(i & j),
symmetric and orthogonal up to the factor), then each row is quantised symmetrically to int8:

    s = max(max_j |y_j|, 1e-8) / 127,   q = clamp(round(y / s), −128, 127)   (half to even),

returning ``(q int8 (N, D), s float32 (N, 1))``; q·s is the fake-quantised rotated activation.
Computed in float32.
"""

from __future__ import annotations

import math

import torch

QMAX = 127


def hadamard_matrix(block: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (block, block) Sylvester Hadamard matrix of ±1 entries (block a power of two)."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"block {block} is not a power of two")
    i = torch.arange(block, device=device)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros_like(bits)
    for b in range(max(block.bit_length() - 1, 0)):
        parity ^= (bits >> b) & 1
    return (1 - 2 * parity).to(dtype)


def hadamard_rotate_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """y = x_blk · H_B / √B per run of ``block`` channels, float32."""
    n, d = x.shape
    if d % block:
        raise ValueError(f"width {d} is not a multiple of block {block}")
    h = hadamard_matrix(block, x.device)
    return (x.float().reshape(n, d // block, block) @ h).reshape(n, d) * (1.0 / math.sqrt(block))


def hadamard_quant_reference(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 per-row scales (N, 1)) of the rotated rows (see the module docstring)."""
    y = hadamard_rotate_reference(x, block)
    s = y.abs().amax(1, keepdim=True).clamp_min(1e-8) / QMAX
    q = torch.clamp(torch.round(y / s), -QMAX - 1, QMAX)
    return q.to(torch.int8), s
