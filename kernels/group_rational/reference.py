"""The group-rational function in plain torch: the specification the Triton kernel must match.

For x of shape (..., D) with D split into ``g`` contiguous groups of D/g channels:

    F(x) = P(x) / Q(x),   P(x) = Σ_{i=0..5} a_i x^i  (one numerator shared by all groups),
    Q(x) = 1 + Σ_{j=1..4} |b_{k,j}| · |x|^j           (one denominator per group k),

the form KAT's released CUDA and Triton kernels compute (METHODS.md A.2): Q ≥ 1, so there are no poles.
``numerator`` has shape (6,), ``denominator`` (g, 4). Computed in float32, returned in x's dtype.
"""

from __future__ import annotations

import torch


def group_rational_reference(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """F(x) for every element, groups along the last dimension (see the module docstring)."""
    groups = denominator.shape[0]
    width = x.shape[-1]
    if width % groups:
        raise ValueError(f"last dimension {width} is not divisible by {groups} groups")
    xf = x.float()
    a = numerator.float()
    b = denominator.float().abs().repeat_interleave(width // groups, dim=0)  # (D, 4)
    p = a[5]
    for i in range(4, -1, -1):
        p = p * xf + a[i]
    ax = xf.abs()
    q = b[:, 3] * ax
    for j in range(2, -1, -1):
        q = (q + b[:, j]) * ax
    return (p / (1.0 + q)).to(x.dtype)


def group_rational_backward_reference(grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                                      denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d numerator, d denominator) by the closed-form derivatives, in float32:

    dF/dx = (P'Q − PQ')/Q²,  dF/da_i = x^i/Q,  dF/db_{k,j} = −P/Q² · sign(b_{k,j}) · |x|^j.
    """
    groups = denominator.shape[0]
    width = x.shape[-1]
    xf = x.float().reshape(-1, width)
    g = grad.float().reshape(-1, width)
    a = numerator.float()
    raw = denominator.float().repeat_interleave(width // groups, dim=0)  # (D, 4)
    b = raw.abs()
    powers = torch.stack([xf**i for i in range(6)])  # (6, N, D)
    p = (a[:, None, None] * powers).sum(0)
    dp = sum(i * a[i] * powers[i - 1] for i in range(1, 6))
    ax = xf.abs()
    apowers = torch.stack([ax**j for j in range(1, 5)])  # |x|^1..4, (4, N, D)
    q = 1.0 + (b.t()[:, None, :] * apowers).sum(0)
    dq = torch.sign(xf) * sum((j + 1) * b[:, j] * ax**j for j in range(4))
    dx = g * (dp * q - p * dq) / q**2
    d_num = (g / q * powers).sum((1, 2))
    per_channel = (-g * p / q**2 * apowers).sum(1) * torch.sign(raw).t()  # (4, D)
    d_den = per_channel.t().reshape(groups, width // groups, 4).sum(1)
    return dx.reshape(x.shape).to(x.dtype), d_num.to(numerator.dtype), d_den.to(denominator.dtype)
