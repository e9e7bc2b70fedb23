"""Triton kernels for group-wise fake quantisation (see ``reference.py`` for the exact semantics).

One program handles BLOCK_M rows × one group (GROUP channels, a power of two ≥ the group size), so
scales are per program and dynamic scales are a row-wise max inside registers. Float32 arithmetic after
each load. Rounding is half to even, like ``torch.round`` (written out with ``floor``, which the CPU
interpreter supports, unlike ``libdevice.rint``). x/s is computed as x·(1/s), with the reciprocal by IEEE
division (``div_rn``) once per scale: that is what ``torch.fake_quantize_per_*_affine`` and the layers in
``passes/quant`` compute, so lowered layers match them bit for bit, and a multiply per element is cheaper
than a division (the GPU's default fast division is also off by an ulp now and then). The product is
rounded before rounding to the grid (``mul_rn``): a fused multiply-add would skip that rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rounding import mul_rn, round_half_even

BLOCK_M = 16


@triton.jit
def _static_forward(x_ptr, y_ptr, s_ptr, z_ptr, n_rows, width, group_size, n_groups, qmin, qmax,
                    BLOCK_M: tl.constexpr, GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    grp = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, GROUP)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < group_size)
    offs = rows[:, None] * width + grp * group_size + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + rows * n_groups + grp, mask=row_ok, other=1.0).to(tl.float32)[:, None]
    z = tl.load(z_ptr + rows * n_groups + grp, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    q = tl.minimum(tl.maximum(round_half_even(mul_rn(x, tl.div_rn(1.0, s))) + z, qmin), qmax)
    tl.store(y_ptr + offs, ((q - z) * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _static_backward(g_ptr, x_ptr, dx_ptr, ds_ptr, s_ptr, z_ptr, n_rows, width, group_size, n_groups, qmin,
                     qmax, BLOCK_M: tl.constexpr, GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    grp = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, GROUP)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < group_size)
    offs = rows[:, None] * width + grp * group_size + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + rows * n_groups + grp, mask=row_ok, other=1.0).to(tl.float32)[:, None]
    z = tl.load(z_ptr + rows * n_groups + grp, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    v = mul_rn(x, tl.div_rn(1.0, s))
    r = round_half_even(v)
    level = r + z
    inside = (level >= qmin) & (level <= qmax)
    tl.store(dx_ptr + offs, tl.where(inside, g, 0.0).to(dx_ptr.dtype.element_ty), mask=mask)
    step = tl.where(inside, r - v, tl.where(level < qmin, qmin - z, qmax - z))
    ds = tl.sum(g * step, 1)  # masked lanes have g = 0
    tl.store(ds_ptr + rows * n_groups + grp, ds.to(ds_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _dynamic_forward(x_ptr, y_ptr, n_rows, width, group_size, qmax,
                     BLOCK_M: tl.constexpr, GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    grp = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, GROUP)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < group_size)
    offs = rows[:, None] * width + grp * group_size + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(x), 1), 1e-8)[:, None] / qmax
    q = tl.minimum(tl.maximum(round_half_even(mul_rn(x, tl.div_rn(1.0, s))), -qmax - 1.0), qmax)
    tl.store(y_ptr + offs, (q * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dynamic_forward_looped(x_ptr, y_ptr, n_rows, width, group_size, qmax,
                            BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    # Large groups (per-token scales over thousands of channels) do not fit in registers: one pass over
    # the group for the absmax, a second to quantise (the second read mostly hits the cache).
    pid_m = tl.program_id(0)
    grp = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    base = rows[:, None] * width + grp * group_size
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, group_size, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        mask = row_ok[:, None] & (cols[None, :] < group_size)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), 1))
    s = (tl.maximum(amax, 1e-8) / qmax)[:, None]
    for start in range(0, group_size, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        mask = row_ok[:, None] & (cols[None, :] < group_size)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(round_half_even(mul_rn(x, tl.div_rn(1.0, s))), -qmax - 1.0), qmax)
        tl.store(y_ptr + base + cols[None, :], (q * s).to(y_ptr.dtype.element_ty), mask=mask)


LOOP_ABOVE = 1024  # groups wider than this take one row per program, or the looped kernel
ONE_ROW_UP_TO = 16384
CHUNK = 1024


def _launch_shape(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int, int, int]:
    x2d = x.contiguous()
    n_rows, width = x2d.shape
    if width % group_size:
        raise ValueError(f"width {width} is not a multiple of group_size {group_size}")
    return x2d, n_rows, width, width // group_size


def fake_quant_forward(x, scale, zero, group_size: int, qmin: int, qmax: int, *, block_m: int = BLOCK_M,
                       out=None):
    """Static-scale fake quantisation of a 2-D tensor by the Triton kernel (into ``out`` if given)."""
    x2d, n_rows, width, n_groups = _launch_shape(x, group_size)
    y = torch.empty_like(x2d) if out is None else out
    _static_forward[(triton.cdiv(n_rows, block_m), n_groups)](
        x2d, y, scale.contiguous(), zero.contiguous(), n_rows, width, group_size, n_groups, qmin, qmax,
        BLOCK_M=block_m, GROUP=triton.next_power_of_2(group_size))
    return y


def fake_quant_backward(grad, x, scale, zero, group_size: int, qmin: int, qmax: int, *, block_m: int = BLOCK_M,
                        out=None, out_scale=None):
    """(dx, d scale) of the static-scale fake quantisation by the Triton kernel (into ``out``/``out_scale``
    if given; ``out_scale`` is float32)."""
    x2d, n_rows, width, n_groups = _launch_shape(x, group_size)
    dx = torch.empty_like(x2d) if out is None else out
    ds = torch.empty_like(scale, dtype=torch.float32).contiguous() if out_scale is None else out_scale
    _static_backward[(triton.cdiv(n_rows, block_m), n_groups)](
        grad.contiguous(), x2d, dx, ds, scale.contiguous(), zero.contiguous(), n_rows, width, group_size,
        n_groups, qmin, qmax, BLOCK_M=block_m, GROUP=triton.next_power_of_2(group_size))
    return dx, ds.to(scale.dtype)


def fake_quant_dynamic_forward(x, group_size: int, bits: int, *, block_m: int = BLOCK_M, out=None):
    """Symmetric fake quantisation with per-(row, group) absmax scales computed in the kernel."""
    x2d, n_rows, width, n_groups = _launch_shape(x, group_size)
    y = torch.empty_like(x2d) if out is None else out
    if LOOP_ABOVE < group_size <= ONE_ROW_UP_TO:
        # One row per program with many warps: a per-token group of up to 16k channels fits in registers.
        _dynamic_forward[(n_rows, n_groups)](x2d, y, n_rows, width, group_size, float(2 ** (bits - 1) - 1),
                                             BLOCK_M=1, GROUP=triton.next_power_of_2(group_size), num_warps=16)
        return y
    if group_size > LOOP_ABOVE:
        rows_per_program = 4
        _dynamic_forward_looped[(triton.cdiv(n_rows, rows_per_program), n_groups)](
            x2d, y, n_rows, width, group_size, float(2 ** (bits - 1) - 1), BLOCK_M=rows_per_program, CHUNK=CHUNK)
        return y
    _dynamic_forward[(triton.cdiv(n_rows, block_m), n_groups)](
        x2d, y, n_rows, width, group_size, float(2 ** (bits - 1) - 1),
        BLOCK_M=block_m, GROUP=triton.next_power_of_2(group_size))
    return y
