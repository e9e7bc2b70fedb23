"""Triton kernels for the group-rational function: forward, and backward with a two-stage reduction.

Tiles are (BLOCK_M rows × BLOCK_N channels of one group), so each program reads its group's four
denominator coefficients once. Arithmetic is float32 after every load (the CPU interpreter cannot do
bf16 arithmetic, and it is what the released kernels do too); results are cast on store.

Backward writes dx elementwise; for the coefficients each program walks a run of rows, accumulates in
registers, and writes one partial sum (6 numerator and 4 denominator terms) into a small buffer that
torch sums afterwards: no per-element global atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 32
BLOCK_N = 128
BACKWARD_BLOCK_M = 8  # rows per step of the backward's row loop (ten accumulators live in registers)
BACKWARD_ROWS = 128  # rows each backward program walks before its one reduction


@triton.jit
def _forward(x_ptr, y_ptr, a_ptr, b_ptr, n_rows, width, group_width, chunks,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = pid_n // chunks
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols_in_group = (pid_n % chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = group * group_width + cols_in_group
    mask = (rows[:, None] < n_rows) & (cols_in_group[None, :] < group_width)
    offs = rows[:, None] * width + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a0 = tl.load(a_ptr + 0).to(tl.float32)
    a1 = tl.load(a_ptr + 1).to(tl.float32)
    a2 = tl.load(a_ptr + 2).to(tl.float32)
    a3 = tl.load(a_ptr + 3).to(tl.float32)
    a4 = tl.load(a_ptr + 4).to(tl.float32)
    a5 = tl.load(a_ptr + 5).to(tl.float32)
    b1 = tl.abs(tl.load(b_ptr + group * 4 + 0).to(tl.float32))
    b2 = tl.abs(tl.load(b_ptr + group * 4 + 1).to(tl.float32))
    b3 = tl.abs(tl.load(b_ptr + group * 4 + 2).to(tl.float32))
    b4 = tl.abs(tl.load(b_ptr + group * 4 + 3).to(tl.float32))
    p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
    ax = tl.abs(x)
    q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
    tl.store(y_ptr + offs, (p / q).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward(x_ptr, g_ptr, dx_ptr, da_ptr, db_ptr, a_ptr, b_ptr, n_rows, width, group_width, chunks,
              rows_per_program, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Each program walks ``rows_per_program`` rows of one group's column chunk, accumulating the ten
    # coefficient-gradient terms elementwise in registers, and reduces them once at the end: the
    # reductions cost one pass per program instead of one per tile.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = pid_n // chunks
    cols_in_group = (pid_n % chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = group * group_width + cols_in_group
    col_ok = cols_in_group < group_width
    a0 = tl.load(a_ptr + 0).to(tl.float32)
    a1 = tl.load(a_ptr + 1).to(tl.float32)
    a2 = tl.load(a_ptr + 2).to(tl.float32)
    a3 = tl.load(a_ptr + 3).to(tl.float32)
    a4 = tl.load(a_ptr + 4).to(tl.float32)
    a5 = tl.load(a_ptr + 5).to(tl.float32)
    r1 = tl.load(b_ptr + group * 4 + 0).to(tl.float32)
    r2 = tl.load(b_ptr + group * 4 + 1).to(tl.float32)
    r3 = tl.load(b_ptr + group * 4 + 2).to(tl.float32)
    r4 = tl.load(b_ptr + group * 4 + 3).to(tl.float32)
    b1, b2, b3, b4 = tl.abs(r1), tl.abs(r2), tl.abs(r3), tl.abs(r4)
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc5 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bcc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bcc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bcc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bcc4 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first_row = pid_m * rows_per_program
    for start in range(0, rows_per_program, BLOCK_M):
        rows = first_row + start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & (rows[:, None] < first_row + rows_per_program) & col_ok[None, :]
        offs = rows[:, None] * width + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # masked lanes add nothing
        x2 = x * x
        x3 = x2 * x
        x4 = x3 * x
        p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
        dp = a1 + x * (2.0 * a2 + x * (3.0 * a3 + x * (4.0 * a4 + x * 5.0 * a5)))
        ax = tl.abs(x)
        ax2 = ax * ax
        ax3 = ax2 * ax
        q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
        sign_x = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
        dq = sign_x * (b1 + ax * (2.0 * b2 + ax * (3.0 * b3 + ax * 4.0 * b4)))
        inv_q = 1.0 / q
        gq = g * inv_q
        dx = gq * (dp - p * dq * inv_q)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        acc0 += gq
        acc1 += gq * x
        acc2 += gq * x2
        acc3 += gq * x3
        acc4 += gq * x4
        acc5 += gq * x4 * x
        gpq = -gq * p * inv_q
        bcc1 += gpq * ax
        bcc2 += gpq * ax2
        bcc3 += gpq * ax3
        bcc4 += gpq * ax3 * ax
    pid = pid_m * tl.num_programs(1) + pid_n
    tl.store(da_ptr + pid * 6 + 0, tl.sum(tl.sum(acc0, 1), 0))
    tl.store(da_ptr + pid * 6 + 1, tl.sum(tl.sum(acc1, 1), 0))
    tl.store(da_ptr + pid * 6 + 2, tl.sum(tl.sum(acc2, 1), 0))
    tl.store(da_ptr + pid * 6 + 3, tl.sum(tl.sum(acc3, 1), 0))
    tl.store(da_ptr + pid * 6 + 4, tl.sum(tl.sum(acc4, 1), 0))
    tl.store(da_ptr + pid * 6 + 5, tl.sum(tl.sum(acc5, 1), 0))
    s1 = tl.where(r1 > 0, 1.0, tl.where(r1 < 0, -1.0, 0.0))
    s2 = tl.where(r2 > 0, 1.0, tl.where(r2 < 0, -1.0, 0.0))
    s3 = tl.where(r3 > 0, 1.0, tl.where(r3 < 0, -1.0, 0.0))
    s4 = tl.where(r4 > 0, 1.0, tl.where(r4 < 0, -1.0, 0.0))
    tl.store(db_ptr + pid * 4 + 0, s1 * tl.sum(tl.sum(bcc1, 1), 0))
    tl.store(db_ptr + pid * 4 + 1, s2 * tl.sum(tl.sum(bcc2, 1), 0))
    tl.store(db_ptr + pid * 4 + 2, s3 * tl.sum(tl.sum(bcc3, 1), 0))
    tl.store(db_ptr + pid * 4 + 3, s4 * tl.sum(tl.sum(bcc4, 1), 0))


def _grid(n_rows: int, groups: int, group_width: int, block_m: int, block_n: int) -> tuple[int, int, int]:
    chunks = triton.cdiv(group_width, block_n)
    return triton.cdiv(n_rows, block_m), groups * chunks, chunks


def group_rational_forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                           *, block_m: int = BLOCK_M, block_n: int = BLOCK_N, out: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """F(x) by the Triton kernel; x is (..., D) (made contiguous). ``out`` (contiguous, x's shape) is
    written in place when given (tests poison it with NaN to catch unwritten elements)."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    n_rows, width = x2d.shape
    groups = denominator.shape[0]
    y = torch.empty_like(x2d) if out is None else out.view(n_rows, width)
    grid_m, grid_n, chunks = _grid(n_rows, groups, width // groups, block_m, block_n)
    _forward[(grid_m, grid_n)](x2d, y, numerator.contiguous(), denominator.contiguous(), n_rows, width,
                               width // groups, chunks, BLOCK_M=block_m, BLOCK_N=block_n)
    return y.reshape(x.shape)


def group_rational_backward(grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                            denominator: torch.Tensor, *, block_m: int = BACKWARD_BLOCK_M, block_n: int = BLOCK_N,
                            out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d numerator, d denominator) by the Triton kernel and a second-stage torch sum; ``out``
    receives dx when given."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    g2d = grad.reshape(-1, grad.shape[-1]).contiguous()
    n_rows, width = x2d.shape
    groups = denominator.shape[0]
    rows_per_program = max(block_m, min(BACKWARD_ROWS, triton.next_power_of_2(n_rows)))
    grid_m, grid_n, chunks = _grid(n_rows, groups, width // groups, rows_per_program, block_n)
    dx = torch.empty_like(x2d) if out is None else out.view(n_rows, width)
    partial_a = torch.empty(grid_m * grid_n, 6, device=x.device, dtype=torch.float32)
    partial_b = torch.empty(grid_m * grid_n, 4, device=x.device, dtype=torch.float32)
    _backward[(grid_m, grid_n)](x2d, g2d, dx, partial_a, partial_b, numerator.contiguous(),
                                denominator.contiguous(), n_rows, width, width // groups, chunks,
                                rows_per_program, BLOCK_M=block_m, BLOCK_N=block_n)
    d_num = partial_a.sum(0).to(numerator.dtype)
    d_den = partial_b.view(grid_m, groups, chunks, 4).sum((0, 2)).to(denominator.dtype)
    return dx.reshape(x.shape), d_num, d_den
