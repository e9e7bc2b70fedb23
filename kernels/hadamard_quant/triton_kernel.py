"""Triton kernel: block-Hadamard rotation on tensor cores + int8 per-token quantisation (see ``reference.py``).

Rows of up to 32 blocks (4096 channels at B = 128): one program holds a whole row as an (NB × B) tile
and rotates all its blocks with one ``tl.dot`` (x read once, codes written once). Wider rows: one program
owns BLOCK_M rows and walks the row in runs of B channels twice: the first pass rotates each
(BLOCK_M × B) tile with one ``tl.dot`` against the ±1 Hadamard tile (built in registers from the bit
parity of i & j, never loaded) and keeps the row absmax; the second recomputes the rotation (the re-read
mostly hits L2, the dot is cheap) and writes int8 codes. Nothing but x, the codes and the scales touches
memory.

Precision: float32 after every load. 16-bit inputs go into the dot as float16 after scaling each tile row
by a power of two (exact) into [1, 2): bf16 and fp16 values then fit float16 exactly at any magnitude
(elements below 2^-24 of their row's max lose bits, far below the sum's rounding), and the accumulation
is float32: Hadamard entries are ±1, so every product is exact. float32 inputs use an IEEE float32 dot
(no TF32 truncation). Rounding is half to even with IEEE division, like the reference; codes can still
differ by one where the float32 sums of the two orders land on either side of a rounding boundary.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..rounding import round_half_even


BLOCK_M = 16  # H200, 8192x14336 bf16: 16 → 413 µs, 32 → 507, 64 → 826


@triton.jit
def _hadamard_tile(B: tl.constexpr, LOG2B: tl.constexpr, DOT_DTYPE: tl.constexpr):
    i = tl.arange(0, B)[:, None]
    j = tl.arange(0, B)[None, :]
    bits = i & j
    parity = tl.zeros((B, B), dtype=tl.int32)
    for b in tl.static_range(LOG2B):
        parity = parity ^ ((bits >> b) & 1)
    return (1 - 2 * parity).to(DOT_DTYPE)


@triton.jit
def _rotate(x_ptr, rows, row_ok, width, start, h, inv_sqrt_b, B: tl.constexpr, DOT_DTYPE: tl.constexpr,
            IEEE: tl.constexpr):
    cols = start + tl.arange(0, B)
    mask = row_ok[:, None] & (cols[None, :] < width)
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if IEEE:
        y = tl.dot(x.to(DOT_DTYPE), h, input_precision="ieee")
    else:
        # Scale each row by 2^-floor(log2 max|x|) (exponent bits only: exact) so float16 holds it at any
        # magnitude; bf16's 8-bit mantissa fits in float16's 11, so the cast is exact.
        amax = tl.max(tl.abs(x), 1)
        p = (amax.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
        p = tl.where(p > 0.0, p, 1.0)[:, None]
        y = tl.dot((x * (1.0 / p)).to(DOT_DTYPE), h, out_dtype=tl.float32) * p
    return y * inv_sqrt_b, cols, mask


@triton.jit
def _hadamard_quant(x_ptr, q_ptr, s_ptr, n_rows, width, inv_sqrt_b, B: tl.constexpr, LOG2B: tl.constexpr,
                    BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    h = _hadamard_tile(B, LOG2B, DOT_DTYPE)
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, width, B):
        y, cols, mask = _rotate(x_ptr, rows, row_ok, width, start, h, inv_sqrt_b, B, DOT_DTYPE, IEEE)
        amax = tl.maximum(amax, tl.max(tl.abs(y), 1))
    s = tl.maximum(amax, 1e-8) / 127.0
    tl.store(s_ptr + rows, s, mask=row_ok)
    for start in range(0, width, B):
        y, cols, mask = _rotate(x_ptr, rows, row_ok, width, start, h, inv_sqrt_b, B, DOT_DTYPE, IEEE)
        q = tl.minimum(tl.maximum(round_half_even(tl.div_rn(y, s[:, None])), -128.0), 127.0)
        tl.store(q_ptr + rows.to(tl.int64)[:, None] * width + cols[None, :], q.to(tl.int8), mask=mask)


@triton.jit
def _hadamard_quant_row(x_ptr, q_ptr, s_ptr, width, n_blocks, inv_sqrt_b, B: tl.constexpr, LOG2B: tl.constexpr,
                        NB: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr):
    # One row per program, held whole as an (NB blocks × B) tile: a single tl.dot rotates every block,
    # so x is read once and the codes written once.
    row = tl.program_id(0).to(tl.int64)
    blk = tl.arange(0, NB)[:, None]
    offs = row * width + blk * B + tl.arange(0, B)[None, :]
    mask = blk < n_blocks
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = _hadamard_tile(B, LOG2B, DOT_DTYPE)
    if IEEE:
        y = tl.dot(x.to(DOT_DTYPE), h, input_precision="ieee")
    else:  # per-block power-of-two scaling into float16's range, as in _rotate
        amax_b = tl.max(tl.abs(x), 1)
        p = (amax_b.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
        p = tl.where(p > 0.0, p, 1.0)[:, None]
        y = tl.dot((x * (1.0 / p)).to(DOT_DTYPE), h, out_dtype=tl.float32) * p
    y = y * inv_sqrt_b
    s = tl.maximum(tl.max(tl.max(tl.abs(y), 1), 0), 1e-8) / 127.0
    tl.store(s_ptr + row, s)
    q = tl.minimum(tl.maximum(round_half_even(tl.div_rn(y, s)), -128.0), 127.0)
    tl.store(q_ptr + offs, q.to(tl.int8), mask=mask)


ROW_TILE_UP_TO = 32  # rows of at most this many blocks take the one-row-per-program kernel (H200: faster
# than the looped one at 4096 channels, 114 vs 125 µs; slower at 14336, 559 vs 413 µs)


def hadamard_quant_forward(x: torch.Tensor, block: int = 128, *, block_m: int = BLOCK_M,
                           out: torch.Tensor | None = None, out_scale: torch.Tensor | None = None,
                           row_loop: bool = False, num_warps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (N, D), float32 scales (N, 1)) of 2-D ``x``; written into ``out``/``out_scale`` if given.

    Rows of up to ROW_TILE_UP_TO blocks are rotated whole, one row per program (one read of x); wider rows
    (or ``row_loop=True``) take the looped kernel, BLOCK_M rows per program, two passes over the row."""
    if block < 16 or block > 128 or block & (block - 1):
        raise ValueError(f"block {block}: the kernel takes powers of two from 16 to 128 (tl.dot tiles)")
    x2d = x.contiguous()
    n_rows, width = x2d.shape
    if width % block:
        raise ValueError(f"width {width} is not a multiple of block {block}")
    q = torch.empty(n_rows, width, device=x.device, dtype=torch.int8) if out is None else out
    s = torch.empty(n_rows, 1, device=x.device, dtype=torch.float32) if out_scale is None else out_scale
    ieee = x.dtype == torch.float32
    dot_dtype = tl.float32 if ieee else tl.float16
    n_blocks = width // block
    if n_blocks <= ROW_TILE_UP_TO and not row_loop:
        _hadamard_quant_row[(n_rows,)](x2d, q, s, width, n_blocks, 1.0 / math.sqrt(block), B=block,
                                       LOG2B=block.bit_length() - 1, NB=max(16, triton.next_power_of_2(n_blocks)),
                                       DOT_DTYPE=dot_dtype, IEEE=ieee, num_warps=num_warps)
        return q, s
    _hadamard_quant[(triton.cdiv(n_rows, block_m),)](
        x2d, q, s, n_rows, width, 1.0 / math.sqrt(block), B=block, LOG2B=block.bit_length() - 1,
        BLOCK_M=block_m, DOT_DTYPE=dot_dtype, IEEE=ieee)
    return q, s
