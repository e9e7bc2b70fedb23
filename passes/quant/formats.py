"""Quantisation arithmetic as plain functions (no modules, no state).

Conventions (shared by every quantizer in this package):
- A uniform grid is ``x̂ = (clamp(round(x · (1/Δ)) + z, qmin, qmax) − z) · Δ``. Multiplying by the
  reciprocal (not dividing) is what ``torch.fake_quantize_per_*_affine`` does, so results coincide bit for
  bit with those ops when Δ, z, qmin and qmax agree.
- Symmetric grids are signed, ``[−2^{b−1}, 2^{b−1} − 1]`` with z = 0 and Δ = max|x| / (2^{b−1} − 1);
  asymmetric grids are ``[0, 2^b − 1]`` with Δ = (max − min)/(2^b − 1), z = round(−min/Δ) (OmniQuant's
  convention: the range is not widened to contain 0).
- Rounding uses the straight-through estimator (:func:`round_ste`): forward ``round``, backward identity.
"""

from __future__ import annotations

import math

import torch

SCALE_MIN, SCALE_MAX = 1e-5, 1e4  # OmniQuant clamps the step to this range
FP8 = {"fp8e4m3": torch.float8_e4m3fn, "fp8e5m2": torch.float8_e5m2}
SQRT1_2 = 1.0 / math.sqrt(2.0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward, gradient multiplied by ``factor`` backward (LSQ's step-gradient scaling)."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-bit integer grid."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def uniform_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """Step Δ and zero point z (a float holding an integer, rounded with STE) for the range [lo, hi]."""
    if symmetric:
        step = torch.maximum(lo.abs(), hi.abs()) / (2 ** (bits - 1) - 1)
        step = step.clamp(SCALE_MIN, SCALE_MAX)
        return step, torch.zeros_like(step)
    step = ((hi - lo) / (2**bits - 1)).clamp(SCALE_MIN, SCALE_MAX)
    return step, round_ste(-lo / step)


def fake_uniform(x: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantise-dequantise ``x`` on the grid (Δ=step, z=zero, [qmin, qmax]), broadcasting step/zero."""
    q = torch.clamp(round_ste(x * (1.0 / step)) + zero, qmin, qmax)
    return (q - zero) * step


def int_codes(x: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The integer codes ``clamp(round(x/Δ) + z)`` of :func:`fake_uniform` (no gradient)."""
    return torch.clamp(torch.round(x * (1.0 / step)) + zero, qmin, qmax)


def fake_fp8(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round ``x / scale`` to the fp8 format ``fmt`` (saturating) and scale back; STE gradient."""
    dtype = FP8[fmt]
    top = torch.finfo(dtype).max
    v = torch.clamp(x * (1.0 / scale), -top, top)
    return (v + (v.to(dtype).to(v.dtype) - v).detach()) * scale


def fp8_max(fmt: str) -> float:
    """Largest finite value of an fp8 format (448 for e4m3fn, 57344 for e5m2)."""
    return float(torch.finfo(FP8[fmt]).max)


def pow_sqrt2(e: torch.Tensor) -> torch.Tensor:
    """(√2)^(−e) for integer-valued ``e ≥ 0`` through the look-up form 2^(−⌊e/2⌋) · {1, 1/√2}[e mod 2]."""
    e = e.to(torch.int32)
    lut = torch.tensor([1.0, SQRT1_2], dtype=torch.float32, device=e.device)
    return torch.ldexp(lut[e % 2], -(e // 2)).to(torch.float32)


def fake_post(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """POST (power-of-√2) quantiser: levels {0, ±α·(√2)^(−e)}, e = 0..2^(b−1)−2; STE gradient.

    e = clamp(round(−2·log2(|x|/α)), 0, E_max); an exponent rounding beyond E_max gives 0 (one of the
    2^(b−1) magnitude codes is zero, the sign takes the last bit).
    """
    emax = 2 ** (bits - 1) - 2
    with torch.no_grad():
        e = torch.round(-2.0 * torch.log2(x.abs() / alpha))
        keep = e <= emax  # |x| = 0 gives e = +inf, so it maps to 0 here too
        level = pow_sqrt2(e.clamp(0, emax).nan_to_num(0.0)).to(x.dtype)
        out = torch.where(keep, torch.sign(x) * alpha * level, torch.zeros_like(x))
    return x + (out - x).detach()


def fake_log(a: torch.Tensor, delta: torch.Tensor, bits: int, sqrt2: bool) -> torch.Tensor:
    """log2 (``sqrt2=False``) or log√2 quantiser for values in [0, Δ] (softmax outputs); STE gradient.

    q = round(−k·log2(a/Δ)) with k = 1 (log2) or 2 (log√2); codes ≥ 2^b give 0; else â = Δ·2^(−q/k).
    The log√2 level is computed as Δ·2^(−⌈q/2⌉)·(√2 if q odd), the shift-plus-constant form RepQ-ViT
    reparameterises to for inference.
    """
    k = 2.0 if sqrt2 else 1.0
    top = 2**bits - 1
    with torch.no_grad():
        q = torch.round(-k * torch.log2(a / delta))
        keep = q <= top  # a = 0 gives +inf
        q = q.clamp(0, top).nan_to_num(0.0)
        if sqrt2:
            odd = torch.remainder(q, 2) == 1
            level = torch.ldexp(torch.where(odd, math.sqrt(2.0), 1.0).to(a.dtype), -torch.ceil(q / 2).to(torch.int32))
        else:
            level = torch.ldexp(torch.ones_like(a), -q.to(torch.int32))
        out = torch.where(keep, delta * level, torch.zeros_like(a))
    return a + (out - a).detach()
