"""Triton kernels for the gated activation y = act(gate)·up·m (see ``reference.py``).

Forward: one (BLOCK_M × BLOCK_N) tile per program. ``gate`` and ``up`` are read through their own row
strides, so the two halves of a fused (N, 2D) projection are used in place (no copies). Backward writes
d gate and d up elementwise; d m (when there is a multiplier) is reduced in two stages: each program walks
a run of rows accumulating per-column sums in registers and writes one partial row, which torch sums (no
per-element atomics). Float32 arithmetic after every load; results cast on store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import ACTS

BLOCK_M = 32
BLOCK_N = 128
BACKWARD_BLOCK_M = 16
BACKWARD_ROWS = 128
SQRT_HALF = tl.constexpr(0.7071067811865476)  # globals a @jit function reads must be constexpr on the GPU
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
K_TANH = tl.constexpr(0.7978845608028654)


@triton.jit
def _act_and_grad(x, KIND: tl.constexpr, NEED_GRAD: tl.constexpr):
    # (act(x), act'(x)) in float32; act'(x) is 0.0 unless NEED_GRAD.
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
def _forward(g_ptr, u_ptr, m_ptr, y_ptr, n_rows, width, stride_g, stride_u,
             KIND: tl.constexpr, HAS_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < width
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(g_ptr + r64 * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + r64 * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(x, KIND, False)
    y = a * u
    if HAS_M:
        y = y * tl.load(m_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + r64 * width + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward(d_ptr, g_ptr, u_ptr, m_ptr, dg_ptr, du_ptr, dm_ptr, n_rows, width, stride_g, stride_u,
              rows_per_program, KIND: tl.constexpr, HAS_M: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < width
    if HAS_M:
        m = tl.load(m_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    else:
        m = 1.0
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = pid_m * rows_per_program
    for start in range(0, rows_per_program, BLOCK_M):
        rows = first + start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & (rows[:, None] < first + rows_per_program) & col_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        offs = r64 * width + cols[None, :]
        g = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # masked lanes add nothing
        x = tl.load(g_ptr + r64 * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + r64 * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        a, da = _act_and_grad(x, KIND, True)
        gm = g * m
        tl.store(dg_ptr + offs, (gm * u * da).to(dg_ptr.dtype.element_ty), mask=mask)
        tl.store(du_ptr + offs, (gm * a).to(du_ptr.dtype.element_ty), mask=mask)
        if HAS_M:
            acc += g * a * u
    if HAS_M:
        tl.store(dm_ptr + pid_m * width + cols, tl.sum(acc, 0), mask=col_ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    # (N, D) view with unit column stride (row stride free: halves of a fused projection stay in place).
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _kind(kind: str) -> int:
    if kind not in ACTS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTS}")
    return ACTS.index(kind)


def gated_act_forward(gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None, kind: str, *,
                      block_m: int = BLOCK_M, block_n: int = BLOCK_N, out: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """act(gate)·up·m by the Triton kernel; ``out`` (contiguous, gate's shape) is written when given."""
    g2, u2 = _rows(gate), _rows(up)
    n_rows, width = g2.shape
    y = torch.empty(n_rows, width, device=gate.device, dtype=gate.dtype) if out is None else out.view(n_rows, width)
    m = multiplier.contiguous() if multiplier is not None else g2
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(width, block_n))
    _forward[grid](g2, u2, m, y, n_rows, width, g2.stride(0), u2.stride(0), KIND=_kind(kind),
                   HAS_M=multiplier is not None, BLOCK_M=block_m, BLOCK_N=block_n)
    return y.reshape(gate.shape)


def gated_act_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None,
                       kind: str, *, block_m: int = BACKWARD_BLOCK_M, block_n: int = BLOCK_N,
                       out_gate: torch.Tensor | None = None, out_up: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(d gate, d up, d multiplier or None) by the Triton kernel and a second-stage torch sum."""
    g2, u2 = _rows(gate), _rows(up)
    d2 = grad.reshape(-1, grad.shape[-1]).contiguous()
    n_rows, width = g2.shape
    dg = torch.empty(n_rows, width, device=gate.device, dtype=gate.dtype) if out_gate is None \
        else out_gate.view(n_rows, width)
    du = torch.empty(n_rows, width, device=up.device, dtype=up.dtype) if out_up is None else out_up.view(n_rows, width)
    rows_per_program = max(block_m, min(BACKWARD_ROWS, triton.next_power_of_2(n_rows)))
    grid_m = triton.cdiv(n_rows, rows_per_program)
    has_m = multiplier is not None
    partial = torch.empty(grid_m if has_m else 1, width, device=gate.device, dtype=torch.float32)
    m = multiplier.contiguous() if has_m else g2
    _backward[(grid_m, triton.cdiv(width, block_n))](
        d2, g2, u2, m, dg, du, partial, n_rows, width, g2.stride(0), u2.stride(0), rows_per_program,
        KIND=_kind(kind), HAS_M=has_m, BLOCK_M=block_m, BLOCK_N=block_n)
    dm = partial.sum(0).to(multiplier.dtype) if has_m else None
    return dg.reshape(gate.shape), du.reshape(up.shape), dm
