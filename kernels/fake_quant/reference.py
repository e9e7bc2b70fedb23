"""Group-wise fake quantisation in plain torch: the specification of the Triton kernels.

x has shape (N, D); the last dimension is split into groups of ``group_size`` channels (``group_size
= D`` is per row: per output channel for weights, per token for activations). With one scale s and
zero point z per (row, group):

    q = clamp(round(x · (1/s)) + z, qmin, qmax),   y = (q − z) · s

(x/s is taken as x times the float32 reciprocal of s, as ``torch.fake_quantize_per_*_affine`` does).

Gradients (straight-through estimator with clipping, as LSQ uses): ∂y/∂x = 1 inside the range, 0
outside; LSQ's step gradient ∂y/∂s = round(v) − v inside the range (v = x/s), qmin − z or qmax − z at
the clipped ends, summed over each group (the caller applies LSQ's 1/√(N·qmax) scaling if it wants it).
Rounding is half-to-even (``torch.round``), as ``torch.fake_quantize_per_channel_affine`` does.
"""

from __future__ import annotations

import torch


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    n, d = x.shape
    if d % group_size:
        raise ValueError(f"width {d} is not a multiple of group_size {group_size}")
    return x.reshape(n, d // group_size, group_size)


def fake_quant_reference(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                         qmin: int, qmax: int) -> torch.Tensor:
    """y for static ``scale`` and ``zero`` of shape (N, D // group_size)."""
    xg = _grouped(x.float(), group_size)
    s = scale.float().unsqueeze(-1)
    z = zero.float().unsqueeze(-1)
    q = torch.clamp(torch.round(xg * (1.0 / s)) + z, qmin, qmax)
    return ((q - z) * s).reshape(x.shape).to(x.dtype)


def fake_quant_grads_reference(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                               group_size: int, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx by the clipped STE, d scale by LSQ) for :func:`fake_quant_reference`."""
    xg = _grouped(x.float(), group_size)
    gg = _grouped(grad.float(), group_size)
    s = scale.float().unsqueeze(-1)
    z = zero.float().unsqueeze(-1)
    v = xg * (1.0 / s)
    level = torch.round(v) + z
    inside = (level >= qmin) & (level <= qmax)
    dx = torch.where(inside, gg, torch.zeros_like(gg)).reshape(x.shape).to(x.dtype)
    step = torch.where(inside, torch.round(v) - v, torch.where(level < qmin, qmin - z, qmax - z))
    ds = (gg * step).sum(-1).to(scale.dtype)
    return dx, ds


def fake_quant_dynamic_reference(x: torch.Tensor, group_size: int, bits: int) -> torch.Tensor:
    """Symmetric fake quantisation with s = max|x| / qmax per (row, group), computed on the fly."""
    qmax = 2 ** (bits - 1) - 1
    xg = _grouped(x.float(), group_size)
    s = xg.abs().amax(-1, keepdim=True).clamp_min(1e-8) / qmax
    q = torch.clamp(torch.round(xg * (1.0 / s)), -qmax - 1, qmax)
    return (q * s).reshape(x.shape).to(x.dtype)
