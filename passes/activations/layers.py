"""Learnable activations for ``swap_activation``: PolyReLU, PolyNorm (PolyCom) and CRReLU. Shape-preserving.

- PolyReLU(x) = a₃·ReLU(x)³ + a₂·ReLU(x)² + a₁·ReLU(x) + a₀;
- PolyNorm(x) = a₃·N(x³) + a₂·N(x²) + a₁·N(x) + a₀ with N(z) = z / √(mean_last(z²) + ε), a parameter-free
  RMS normalisation over the hidden axis (so PolyNorm is not elementwise);
- both keep 4 scalars ``coefficients`` = (a₀, a₁, a₂, a₃), initialised (0, 1/3, 1/3, 1/3) as in the
  PolyCom code;
- CRReLU(x) = ReLU(x) + ε·x·exp(−x²/2), one learnable scalar ε per module, initialised 0.01.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POLY_ORDER = 3
POLYNORM_EPS = 1e-6


def _paper_coefficients() -> torch.Tensor:
    return torch.tensor([0.0] + [1.0 / POLY_ORDER] * POLY_ORDER)


class PolyReLU(nn.Module):
    """Order-3 polynomial of ReLU(x) with learnable ``coefficients`` (a₀..a₃)."""

    def __init__(self):
        super().__init__()
        self.coefficients = nn.Parameter(_paper_coefficients())
        self.surgeon_pass = "swap_activation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        a = self.coefficients.to(x.dtype)
        return a[0] + a[1] * r + a[2] * r * r + a[3] * r * r * r


class PolyNorm(nn.Module):
    """Order-3 polynomial of RMS-normalised powers of x with learnable ``coefficients`` (a₀..a₃)."""

    def __init__(self, eps: float = POLYNORM_EPS):
        super().__init__()
        self.coefficients = nn.Parameter(_paper_coefficients())
        self.eps = eps
        self.surgeon_pass = "swap_activation"

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.coefficients.to(x.dtype)
        return a[0] + a[1] * self._norm(x) + a[2] * self._norm(x * x) + a[3] * self._norm(x * x * x)


class CRReLU(nn.Module):
    """ReLU plus a learnable entropy correction ``epsilon·x·exp(−x²/2)``."""

    def __init__(self, epsilon: float = 0.01):
        super().__init__()
        self.epsilon = nn.Parameter(torch.tensor(float(epsilon)))
        self.surgeon_pass = "swap_activation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) + self.epsilon.to(x.dtype) * x * torch.exp(-0.5 * x * x)
