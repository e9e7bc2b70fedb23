"""The weightless norm left behind when a norm's affine part is folded into its readers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightlessNorm(nn.Module):
    """RMS or layer normalisation of the last dimension with no gain or bias.

    Computes in float32 (as HF RMS norms do) and returns the input's dtype. Shapes: (..., width) →
    (..., width).
    """

    def __init__(self, kind: str, eps: float, width: int):
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"kind must be 'rms' or 'layer', got {kind!r}")
        self.kind, self.eps, self.width = kind, float(eps), int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        if self.kind == "layer":
            y = F.layer_norm(x, (self.width,), eps=self.eps)
        else:
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.kind}, width={self.width}, eps={self.eps}"
