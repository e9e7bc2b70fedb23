"""Triton kernels for the gated activation y = act(gate)·up·m (see ``reference.py``).

Forward: one (BLOCK_M × BLOCK_N) tile per program. ``gate`` and ``up`` are read through their own row
strides, so the two halves of a fused (N, 2D) projection are used in place (no copies). Backward writes
d gate and d up elementwise; d m (when there is a multiplier) and, for the rational kind, the ten
coefficient-gradient terms are reduced in two stages: each program walks a run of rows accumulating
per-column sums in registers and writes one partial row per term, which torch sums (no per-element
atomics). Float32 arithmetic after every load; results cast on store.

The rational kind is KAT's group rational (``kernels/group_rational``): a numerator (6,) shared by every
channel and four denominator coefficients per contiguous group of channels, gathered per column (a
tile may straddle groups), so any BLOCK_N works with any group width.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import ACTS

BLOCK_M = 32
BLOCK_N = 128
BACKWARD_BLOCK_M = 16
# Eleven accumulator tiles live in registers in the rational backward; H200, 8192×4096 bf16, (block_m,
# block_n): 4×64 198 µs, 4×128 273, 8×64 259, 8×128 299, 16×128 352.
RATIONAL_BACKWARD_BLOCK_M = 4
RATIONAL_BACKWARD_BLOCK_N = 64
BACKWARD_ROWS = 128
RATIONAL = ACTS.index("rational")
SQRT_HALF = tl.constexpr(0.7071067811865476)  # globals a @jit function reads must be constexpr on the GPU
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
K_TANH = tl.constexpr(0.7978845608028654)


@triton.jit
def _act_and_grad(x, KIND: tl.constexpr, NEED_GRAD: tl.constexpr):
    # (act(x), act'(x)) in float32 for the coefficient-free kinds; act'(x) is 0.0 unless NEED_GRAD.
    if KIND == 0:  # silu
        s = tl.sigmoid(x)
        a = x * s
        d = s * (1.0 + x * (1.0 - s)) if NEED_GRAD else 0.0
    elif KIND == 1:  # gelu (erf)
        c = 0.5 * (1.0 + tl.math.erf(x * SQRT_HALF))
        a = x * c
        d = c + x * tl.exp(-0.5 * x * x) * INV_SQRT_2PI if NEED_GRAD else 0.0
    else:  # gelu (tanh)
        z = K_TANH * (x + 0.044715 * x * x * x)
        t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        a = 0.5 * x * (1.0 + t)
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K_TANH * (1.0 + 3.0 * 0.044715 * x * x) if NEED_GRAD else 0.0
    return a, d


@triton.jit
def _numerator(a_ptr):
    a0 = tl.load(a_ptr + 0).to(tl.float32)
    a1 = tl.load(a_ptr + 1).to(tl.float32)
    a2 = tl.load(a_ptr + 2).to(tl.float32)
    a3 = tl.load(a_ptr + 3).to(tl.float32)
    a4 = tl.load(a_ptr + 4).to(tl.float32)
    a5 = tl.load(a_ptr + 5).to(tl.float32)
    return a0, a1, a2, a3, a4, a5


@triton.jit
def _denominator(b_ptr, cols, col_ok, group_width):
    # The raw (signed) coefficients of each column's group, as (BLOCK_N,) vectors.
    base = (cols // group_width) * 4
    r1 = tl.load(b_ptr + base + 0, mask=col_ok, other=0.0).to(tl.float32)
    r2 = tl.load(b_ptr + base + 1, mask=col_ok, other=0.0).to(tl.float32)
    r3 = tl.load(b_ptr + base + 2, mask=col_ok, other=0.0).to(tl.float32)
    r4 = tl.load(b_ptr + base + 3, mask=col_ok, other=0.0).to(tl.float32)
    return r1, r2, r3, r4


@triton.jit
def _forward(g_ptr, u_ptr, m_ptr, a_ptr, b_ptr, y_ptr, n_rows, width, stride_g, stride_u, group_width,
             KIND: tl.constexpr, HAS_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < width
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(g_ptr + r64 * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + r64 * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if KIND == 3:  # rational
        a0, a1, a2, a3, a4, a5 = _numerator(a_ptr)
        r1, r2, r3, r4 = _denominator(b_ptr, cols, col_ok, group_width)
        p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
        ax = tl.abs(x)
        b1, b2, b3, b4 = tl.abs(r1)[None, :], tl.abs(r2)[None, :], tl.abs(r3)[None, :], tl.abs(r4)[None, :]
        q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
        a = p / q
    else:
        a, _ = _act_and_grad(x, KIND, False)
    y = a * u
    if HAS_M:
        y = y * tl.load(m_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + r64 * width + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sign(v):
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0))


@triton.jit
def _backward(d_ptr, g_ptr, u_ptr, m_ptr, a_ptr, b_ptr, dg_ptr, du_ptr, dm_ptr, dc_ptr, n_rows, width, stride_g,
              stride_u, group_width, rows_per_program, KIND: tl.constexpr, HAS_M: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < width
    if HAS_M:
        m = tl.load(m_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    else:
        m = 1.0
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if KIND == 3:
        a0, a1, a2, a3, a4, a5 = _numerator(a_ptr)
        r1, r2, r3, r4 = _denominator(b_ptr, cols, col_ok, group_width)
        b1, b2, b3, b4 = tl.abs(r1)[None, :], tl.abs(r2)[None, :], tl.abs(r3)[None, :], tl.abs(r4)[None, :]
        # The ten coefficient terms accumulate elementwise in registers and are reduced over rows once at
        # the end (a reduction per step made the backward compute-bound: H200, 8192×4096, 1.09 ms).
        c0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        c1 = c0
        c2 = c0
        c3 = c0
        c4 = c0
        c5 = c0
        e1 = c0
        e2 = c0
        e3 = c0
        e4 = c0
    first = pid_m * rows_per_program
    for start in range(0, rows_per_program, BLOCK_M):
        rows = first + start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & (rows[:, None] < first + rows_per_program) & col_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        offs = r64 * width + cols[None, :]
        g = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # masked lanes add nothing
        x = tl.load(g_ptr + r64 * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + r64 * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        gm = g * m
        if KIND == 3:
            x2 = x * x
            x3 = x2 * x
            x4 = x3 * x
            p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
            dp = a1 + x * (2.0 * a2 + x * (3.0 * a3 + x * (4.0 * a4 + x * 5.0 * a5)))
            ax = tl.abs(x)
            ax2 = ax * ax
            ax3 = ax2 * ax
            q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
            dq = _sign(x) * (b1 + ax * (2.0 * b2 + ax * (3.0 * b3 + ax * 4.0 * b4)))
            inv_q = 1.0 / q
            a = p * inv_q
            da = inv_q * (dp - p * dq * inv_q)
            gq = gm * u * inv_q  # the gradient reaching act(gate), over Q
            c0 += gq
            c1 += gq * x
            c2 += gq * x2
            c3 += gq * x3
            c4 += gq * x4
            c5 += gq * x4 * x
            gpq = -gq * a
            e1 += gpq * ax
            e2 += gpq * ax2
            e3 += gpq * ax3
            e4 += gpq * ax3 * ax
        else:
            a, da = _act_and_grad(x, KIND, True)
        tl.store(dg_ptr + offs, (gm * u * da).to(dg_ptr.dtype.element_ty), mask=mask)
        tl.store(du_ptr + offs, (gm * a).to(du_ptr.dtype.element_ty), mask=mask)
        if HAS_M:
            acc += g * a * u
    if HAS_M:
        tl.store(dm_ptr + pid_m * width + cols, tl.sum(acc, 0), mask=col_ok)
    if KIND == 3:
        # partial[pid_m, term, column]; the denominator terms carry sign(b) of their column's group.
        base = dc_ptr + pid_m * 10 * width + cols
        tl.store(base + 0 * width, tl.sum(c0, 0), mask=col_ok)
        tl.store(base + 1 * width, tl.sum(c1, 0), mask=col_ok)
        tl.store(base + 2 * width, tl.sum(c2, 0), mask=col_ok)
        tl.store(base + 3 * width, tl.sum(c3, 0), mask=col_ok)
        tl.store(base + 4 * width, tl.sum(c4, 0), mask=col_ok)
        tl.store(base + 5 * width, tl.sum(c5, 0), mask=col_ok)
        tl.store(base + 6 * width, _sign(r1) * tl.sum(e1, 0), mask=col_ok)
        tl.store(base + 7 * width, _sign(r2) * tl.sum(e2, 0), mask=col_ok)
        tl.store(base + 8 * width, _sign(r3) * tl.sum(e3, 0), mask=col_ok)
        tl.store(base + 9 * width, _sign(r4) * tl.sum(e4, 0), mask=col_ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    # (N, D) view with unit column stride (row stride free: halves of a fused projection stay in place).
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _kind(kind: str, numerator: torch.Tensor | None, denominator: torch.Tensor | None, width: int) -> int:
    if kind not in ACTS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTS}")
    if (kind == "rational") != (numerator is not None and denominator is not None):
        raise ValueError(f"kind {kind!r}: numerator and denominator are required for 'rational' and only for it")
    if kind == "rational" and (numerator.numel() != 6 or denominator.shape[-1] != 4 or width % denominator.shape[0]):
        raise ValueError(f"rational needs numerator (6,) and denominator (g, 4) with g dividing {width}, got "
                         f"{tuple(numerator.shape)} and {tuple(denominator.shape)}")
    return ACTS.index(kind)


def gated_act_forward(gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None, kind: str,
                      numerator: torch.Tensor | None = None, denominator: torch.Tensor | None = None, *,
                      block_m: int = BLOCK_M, block_n: int = BLOCK_N, out: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """act(gate)·up·m by the Triton kernel; ``out`` (contiguous, gate's shape) is written when given."""
    g2, u2 = _rows(gate), _rows(up)
    n_rows, width = g2.shape
    code = _kind(kind, numerator, denominator, width)
    y = torch.empty(n_rows, width, device=gate.device, dtype=gate.dtype) if out is None else out.view(n_rows, width)
    m = multiplier.contiguous() if multiplier is not None else g2
    a, b, group_width = (numerator.contiguous(), denominator.contiguous(), width // denominator.shape[0]) \
        if code == RATIONAL else (g2, g2, width)
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(width, block_n))
    _forward[grid](g2, u2, m, a, b, y, n_rows, width, g2.stride(0), u2.stride(0), group_width, KIND=code,
                   HAS_M=multiplier is not None, BLOCK_M=block_m, BLOCK_N=block_n)
    return y.reshape(gate.shape)


def gated_act_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None,
                       kind: str, numerator: torch.Tensor | None = None, denominator: torch.Tensor | None = None, *,
                       block_m: int | None = None, block_n: int | None = None,
                       out_gate: torch.Tensor | None = None, out_up: torch.Tensor | None = None):
    """(d gate, d up, d multiplier, d numerator, d denominator) by the Triton kernel and a second-stage torch
    sum; d multiplier is None without a multiplier, the coefficient gradients None unless ``rational``."""
    g2, u2 = _rows(gate), _rows(up)
    d2 = grad.reshape(-1, grad.shape[-1]).contiguous()
    n_rows, width = g2.shape
    code = _kind(kind, numerator, denominator, width)
    if block_m is None:
        block_m = RATIONAL_BACKWARD_BLOCK_M if code == RATIONAL else BACKWARD_BLOCK_M
    if block_n is None:
        block_n = RATIONAL_BACKWARD_BLOCK_N if code == RATIONAL else BLOCK_N
    dg = torch.empty(n_rows, width, device=gate.device, dtype=gate.dtype) if out_gate is None \
        else out_gate.view(n_rows, width)
    du = torch.empty(n_rows, width, device=up.device, dtype=up.dtype) if out_up is None else out_up.view(n_rows, width)
    rows_per_program = max(block_m, min(BACKWARD_ROWS, triton.next_power_of_2(n_rows)))
    grid_m = triton.cdiv(n_rows, rows_per_program)
    has_m = multiplier is not None
    rational = code == RATIONAL
    partial = torch.empty(grid_m if has_m else 1, width, device=gate.device, dtype=torch.float32)
    coef_partial = torch.empty(grid_m if rational else 1, 10, width, device=gate.device, dtype=torch.float32)
    m = multiplier.contiguous() if has_m else g2
    a, b, group_width = (numerator.contiguous(), denominator.contiguous(), width // denominator.shape[0]) \
        if rational else (g2, g2, width)
    _backward[(grid_m, triton.cdiv(width, block_n))](
        d2, g2, u2, m, a, b, dg, du, partial, coef_partial, n_rows, width, g2.stride(0), u2.stride(0), group_width,
        rows_per_program, KIND=code, HAS_M=has_m, BLOCK_M=block_m, BLOCK_N=block_n)
    dm = partial.sum(0).to(multiplier.dtype) if has_m else None
    d_num = d_den = None
    if rational:
        sums = coef_partial.sum(0)  # (10, width)
        d_num = sums[:6].sum(1).to(numerator.dtype)
        groups = denominator.shape[0]
        d_den = sums[6:].reshape(4, groups, group_width).sum(2).t().contiguous().to(denominator.dtype)
    return dg.reshape(gate.shape), du.reshape(up.shape), dm, d_num, d_den
