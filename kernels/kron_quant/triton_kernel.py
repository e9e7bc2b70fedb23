"""Triton kernel: FlatQuant's Kronecker transform on tensor cores + per-token fake quantisation, fused.

Fused path (padded n1·n2 up to FUSED_UP_TO, e.g. 4096 = 64 × 64): one program loads P1ᵀ (N1P × N1P) and
P2 (N2P × N2P) once (zero-padded to powers of two ≥ 16, the smallest ``tl.dot`` tile the GPU compiler
accepts) and then walks TOKENS tokens: per token it reads X_t (n1 × n2) once, computes Z = X_t·P2 and
Y = P1ᵀ·Z with two ``tl.dot`` calls, takes the token's min/max from registers, quantises and writes ŷ
once. Nothing else touches memory. Zero padding is exact (padded rows/columns of Y are 0 and are masked
out of the min/max).

Larger tiles (11008 = 86 × 128, 14336 = 112 × 128: 128 × 128 padded; 64 × 128 too) need more shared
memory for the two float32 dots than an H200 has (294–393 KiB asked, 227 KiB there), so they take an
unfused path: the transform by two batched float32 torch matmuls (the reference's own computation), then
the same kernel without its dots quantises each token (float32 y written and read once more).

Precision: operands go to the dots as float32. On the GPU the default ``tf32x3`` splits each operand into
a TF32 high part and a TF32 residual and uses three tensor-core products, which keeps float32 accuracy;
plain ``tf32`` rounds operands to 10 mantissa bits; ``ieee`` is the CUDA-core float32 path. The
interpreter always computes in float32. The quantisation follows the reference operation by operation
(IEEE division for 1/Δ and −lo/Δ, half-to-even rounding), so ŷ matches the reference except where the
two float32 sums differ in their last bits: Δ itself (from the token's min/max) may differ by an ulp, and
an element whose y/Δ straddles a rounding boundary moves by one step. Measured on an H200 (333 tokens,
64 × 64, an outlier channel): tf32x3 int4-sym 0 elements moved a step, int8-asym 1e-5 of them, the rest
within 2e-4 of a step; ieee 0 and 2e-6; plain tf32 7e-4 and 1.2e-2 (hence not the default).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rounding import mul_rn, round_half_even
from .reference import check_clips, kron_transform_reference

TOKENS = 16  # tokens per program: P1 and P2 are read once per TOKENS tokens
FUSED_UP_TO = 64 * 64  # padded n1·n2 tiles up to this run fused; larger ones do not fit shared memory
SCALE_MIN = tl.constexpr(1e-5)
SCALE_MAX = tl.constexpr(1e4)


@triton.jit
def _kron_quant(x_ptr, p1_ptr, p2_ptr, y_ptr, n_rows, n1, n2, tokens, clip, clip_hi, qmin, qmax,
                SYMMETRIC: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr, PRECISION: tl.constexpr,
                TRANSFORM: tl.constexpr):
    # TRANSFORM=False: x already holds the float32 transform (large tiles); only quantise it.
    i1 = tl.arange(0, N1P)
    i2 = tl.arange(0, N2P)
    ok1 = i1 < n1
    ok2 = i2 < n2
    # P1ᵀ[a, i] = P1[i, a]: read transposed through the pointers.
    p1t = tl.load(p1_ptr + i1[None, :] * n1 + i1[:, None], mask=ok1[:, None] & ok1[None, :], other=0.0)
    p2 = tl.load(p2_ptr + i2[:, None] * n2 + i2[None, :], mask=ok2[:, None] & ok2[None, :], other=0.0)
    p1t = p1t.to(tl.float32)
    p2 = p2.to(tl.float32)
    tile_ok = ok1[:, None] & ok2[None, :]
    offs = i1[:, None] * n2 + i2[None, :]
    width = n1 * n2
    first = tl.program_id(0) * tokens
    for t in range(0, tokens):
        row = first + t
        mask = tile_ok & ((offs * 0 + row) < n_rows)  # a tensor compare: the interpreter rejects a scalar mask
        base = row.to(tl.int64) * width
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        if TRANSFORM:
            z = tl.dot(x, p2, input_precision=PRECISION)
            y = tl.dot(p1t, z, input_precision=PRECISION)
        else:
            y = x
        lo = clip * tl.min(tl.min(tl.where(tile_ok, y, float("inf")), 1), 0)
        hi = clip_hi * tl.max(tl.max(tl.where(tile_ok, y, float("-inf")), 1), 0)
        if SYMMETRIC:
            step = tl.maximum(tl.abs(lo), tl.abs(hi)) / qmax
            step = tl.minimum(tl.maximum(step, SCALE_MIN), SCALE_MAX)
            zero = 0.0
        else:
            step = tl.minimum(tl.maximum((hi - lo) / qmax, SCALE_MIN), SCALE_MAX)
            zero = round_half_even(tl.div_rn(-lo, step))
        inv = tl.div_rn(1.0, step)
        q = tl.minimum(tl.maximum(round_half_even(mul_rn(y, inv)) + zero, qmin), qmax)
        tl.store(y_ptr + base + offs, ((q - zero) * step).to(y_ptr.dtype.element_ty), mask=mask)


def kron_quant_forward(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, bits: int, symmetric: bool = True,
                       clip: float = 1.0, clip_hi: float | None = None, *, tokens: int = TOKENS, precision: str | None = None,
                       num_warps: int | None = None, num_stages: int | None = None, fused: bool | None = None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantised x·(P1 ⊗ P2) per token by the Triton kernel; ``out`` (contiguous) is written when given.

    ``precision``: ``tf32x3`` (GPU default), ``tf32`` or ``ieee`` (interpreter default). ``fused``: force
    the fused path (True) or the torch-transform + quantise path (False); default by tile size."""
    n1, n2 = p1.shape[0], p2.shape[0]
    width = x.shape[-1]
    if width != n1 * n2:
        raise ValueError(f"width {width} is not n1·n2 = {n1}·{n2}")
    clip_hi = check_clips(clip, clip_hi)
    if not 2 <= bits <= 16:
        raise ValueError(f"bits {bits} must lie in [2, 16]")
    x2d = x.reshape(-1, width).contiguous()
    n_rows = x2d.shape[0]
    y = torch.empty_like(x2d) if out is None else out.view(n_rows, width)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    if precision is None:
        precision = "tf32x3" if x.is_cuda else "ieee"
    n1p, n2p = max(16, triton.next_power_of_2(n1)), max(16, triton.next_power_of_2(n2))
    fused = n1p * n2p <= FUSED_UP_TO if fused is None else fused
    if num_warps is None:
        num_warps = 4 if n1p * n2p <= 4096 else 8
    src = x2d if fused else kron_transform_reference(x2d, p1, p2)
    _kron_quant[(triton.cdiv(n_rows, tokens),)](
        src, p1.contiguous(), p2.contiguous(), y, n_rows, n1, n2, tokens, float(clip), float(clip_hi), float(qmin), float(qmax),
        SYMMETRIC=symmetric, N1P=n1p, N2P=n2p, PRECISION=precision, TRANSFORM=fused, num_warps=num_warps,
        **({} if num_stages is None else {"num_stages": num_stages}))
    return y.reshape(x.shape)
