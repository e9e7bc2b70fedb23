"""Triton GEMM with packed int4 weights dequantised in the load path (see ``reference.py`` for the format).

Two kernels: an aligned fast path (below) and a per-element general one for odd layouts.
y (M, N) = x (M, K) · Wᵀ: each program owns a (BLOCK_M × BLOCK_N) output tile and walks K in BLOCK_K
steps. The weight tile (BLOCK_K × BLOCK_N) is read as bytes (each byte holds two neighbouring k), the
nibble is selected by k's parity, and ``(code − zero) · step`` is computed in float32 with the grid row of
element n·K + k (any per-tensor / per-channel / group layout), then rounded to x's dtype, as the reference
rounds the dequantised weight, and fed to ``tl.dot`` with float32 accumulation. On the GPU the dot runs in
x's dtype (bf16/fp16 tensor cores); under the CPU interpreter, which cannot multiply bf16, in float32.
Weights move at 4.4 bits each instead of 16: at decode sizes (a few tokens) the GEMM is bound by the
weight read, which is what this saves.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16
BLOCK_N = 32
BLOCK_K = 128

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _w4a16(x_ptr, c_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, group, stride_x,
           HAS_BIAS: tl.constexpr, W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        wmask = k_ok[:, None] & col_ok[None, :]
        idx = cols.to(tl.int64)[None, :] * K + ks[:, None]  # flat index of W[n, k], tile (BLOCK_K, BLOCK_N)
        byte = tl.load(c_ptr + (idx >> 1), mask=wmask, other=0).to(tl.int32)
        code = ((byte >> ((idx & 1) * 4).to(tl.int32)) & 15).to(tl.float32)
        grid_row = idx // group
        step = tl.load(s_ptr + grid_row, mask=wmask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + grid_row, mask=wmask, other=0).to(tl.float32)
        w = ((code - zero) * step).to(W_DTYPE).to(tl.float32)
        acc += tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(W_DTYPE).to(tl.float32)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _w4a16_aligned(x_ptr, c_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, group, stride_x, k_per_split,
                   HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Fast path (K even, K % BLOCK_K == 0, and each BLOCK_K run of a weight row inside one grid row):
    # bytes are loaded once as a (BLOCK_K/2 × BLOCK_N) tile and split into low/high nibbles, which are
    # interleaved back into k order (H200: 41 µs at 16×4096→11008; two dots against x's even/odd columns
    # instead measured 103 µs); step and zero are one value per column and K step.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    half = K // 2
    pid_k = tl.program_id(2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * k_per_split, tl.minimum((pid_k + 1) * k_per_split, K), BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + ks[None, :], mask=row_ok[:, None],
                    other=0.0).to(tl.float32)
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(c_ptr + cols.to(tl.int64)[None, :] * half + kb[:, None], mask=col_ok[None, :],
                       other=0).to(tl.int32)
        pair = tl.join(byte & 15, byte >> 4)  # (BLOCK_K/2, BLOCK_N, 2): low nibble is the even k
        code = tl.reshape(tl.permute(pair, (0, 2, 1)), (BLOCK_K, BLOCK_N)).to(tl.float32)
        grid_row = (cols.to(tl.int64) * K + k0) // group
        step = tl.load(s_ptr + grid_row, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        zero = tl.load(z_ptr + grid_row, mask=col_ok, other=0).to(tl.float32)[None, :]
        w = ((code - zero) * step).to(W_DTYPE).to(tl.float32)
        acc += tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), out_dtype=tl.float32)
    if SPLIT:  # float32 partial sums (split, M, N); the wrapper sums them and adds the bias
        out = y_ptr + (pid_k * M + rows.to(tl.int64))[:, None] * N + cols[None, :]
        tl.store(out, acc, mask=row_ok[:, None] & col_ok[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(W_DTYPE).to(tl.float32)[None, :]
        tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


def aligned(in_features: int, group: int, block_k: int) -> bool:
    """Whether the fast kernel applies: BLOCK_K ≥ 32, even K, K a multiple of BLOCK_K, every BLOCK_K run of a row
    inside one grid row (per-tensor / per-channel grids, or groups that are multiples of BLOCK_K)."""
    runs_ok = group % in_features == 0 or (in_features % group == 0 and group % block_k == 0)
    return block_k >= 32 and in_features % 2 == 0 and in_features % block_k == 0 and runs_ok


def w4a16_linear_forward(x: torch.Tensor, codes: torch.Tensor, step: torch.Tensor, zero: torch.Tensor,
                         bias: torch.Tensor | None, out_features: int, in_features: int, *,
                         block_m: int = BLOCK_M, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                         out: torch.Tensor | None = None, generic: bool = False, split_k: int = 1) -> torch.Tensor:
    """x (..., in) · Wᵀ + bias by the Triton kernel; ``out`` (contiguous (M, out)) is written when given.

    Takes the aligned fast kernel when :func:`aligned` holds (``generic=True`` forces the per-element one);
    ``split_k`` > 1 splits K over that many programs per tile (decode sizes have too few output tiles to
    fill the GPU) and sums their float32 partials in torch."""
    x2d = x.reshape(-1, in_features)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    m = x2d.shape[0]
    rows = step.shape[0]
    if (out_features * in_features) % rows:
        raise ValueError(f"{rows} grid rows do not divide the {out_features}x{in_features} weight")
    y = torch.empty(m, out_features, device=x.device, dtype=x.dtype) if out is None else out
    dot = _TL[x.dtype] if x.is_cuda else tl.float32
    grid = (triton.cdiv(m, block_m), triton.cdiv(out_features, block_n))
    group = out_features * in_features // rows
    s, z = step.reshape(-1).contiguous(), zero.reshape(-1).contiguous()
    b = bias if bias is not None else step
    if generic or not aligned(in_features, group, block_k):
        _w4a16[grid](x2d, codes, s, z, b, y, m, out_features, in_features, group, x2d.stride(0),
                     HAS_BIAS=bias is not None, W_DTYPE=_TL[x.dtype], DOT_DTYPE=dot, BLOCK_M=block_m,
                     BLOCK_N=block_n, BLOCK_K=block_k)
        return y.reshape(*x.shape[:-1], out_features)
    steps = in_features // block_k
    split = max(1, min(split_k, steps))
    k_per_split = triton.cdiv(steps, split) * block_k
    split = triton.cdiv(in_features, k_per_split)
    target = y if split == 1 else torch.empty(split, m, out_features, device=x.device, dtype=torch.float32)
    _w4a16_aligned[grid + (split,)](x2d, codes, s, z, b, target, m, out_features, in_features, group, x2d.stride(0),
                                    k_per_split, HAS_BIAS=bias is not None, SPLIT=split > 1, W_DTYPE=_TL[x.dtype],
                                    DOT_DTYPE=dot, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    if split > 1:
        total = target.sum(0)
        if bias is not None:
            total += bias.to(x.dtype).float()
        y.copy_(total)
    return y.reshape(*x.shape[:-1], out_features)
