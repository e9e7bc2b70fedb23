"""The W4A16 linear in plain torch, on passes/quant's packed format (``PackedLinear`` with bits = 4).

Weight (out, in) flattened row-major; element k's unsigned 4-bit code is nibble k % 2 (low first) of byte
k // 2 of ``codes`` (uint8). ``step`` (rows, 1) float32 and ``zero`` (rows, 1) int16 hold one grid per run
of out·in/rows consecutive elements (rows = 1: per tensor, out: per channel, out·in/g: groups of g):

    W = ((code − zero) · step).to(x.dtype),   y = x · Wᵀ + bias,

which is exactly ``PackedLinear.dequantised_weight`` followed by ``F.linear`` when bias and x share a dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unpack_int4(codes: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` unsigned 4-bit codes of ``codes`` (uint8, two per byte, low nibble first)."""
    shifts = torch.tensor([0, 4], device=codes.device, dtype=torch.uint8)
    return ((codes[:, None] >> shifts) & 15).reshape(-1)[:numel]


def dequantise(codes: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, out_features: int,
               in_features: int) -> torch.Tensor:
    """The (out, in) float32 weight ``(code − zero) · step``."""
    flat = unpack_int4(codes, out_features * in_features).reshape(step.shape[0], -1).float()
    return ((flat - zero.float()) * step).reshape(out_features, in_features)


def w4a16_linear_reference(x: torch.Tensor, codes: torch.Tensor, step: torch.Tensor, zero: torch.Tensor,
                           bias: torch.Tensor | None, out_features: int, in_features: int) -> torch.Tensor:
    """y = x · Wᵀ + bias with W dequantised from the packed codes and cast to x's dtype."""
    w = dequantise(codes, step, zero, out_features, in_features).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
