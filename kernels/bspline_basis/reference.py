"""The B-spline basis in plain torch: the specification the Triton kernels must match.

x has shape (..., C); ``knots`` (K, G+2k+1) holds one strictly increasing knot vector per run of C/K
contiguous channels (K = C: per channel, as ``BSplineKANLinear``; K = groups: as ``GroupBSpline``).
For every element, the G+k order-``k`` B-splines by the Cox–de Boor recursion (METHODS.md A.1), exactly
as ``passes/kan/basis.py`` writes it:

    B^0_m = 1[t_m ≤ x < t_{m+1}],
    B^p_m = (x − t_m)/(t_{m+p} − t_m) · B^{p−1}_m + (t_{m+p+1} − x)/(t_{m+p+1} − t_{m+1}) · B^{p−1}_{m+1},

returned as (..., C, G+k) in x's dtype (computed in float32, or float64 for float64 inputs). Points outside
the extended grid get all zeros. The gradient w.r.t. x is the basis derivative

    dB^k_m/dx = k · (B^{k−1}_m/(t_{m+k} − t_m) − B^{k−1}_{m+1}/(t_{m+k+1} − t_{m+1})),

so dx = Σ_m g_m · dB^k_m/dx; knots take no gradient (they are a buffer the KAN pass adapts).
"""

from __future__ import annotations

import torch


def _channel_knots(knots: torch.Tensor, channels: int) -> torch.Tensor:
    rows = knots.shape[0]
    if channels % rows:
        raise ValueError(f"{channels} channels cannot share {rows} knot vectors (not a divisor)")
    return knots.repeat_interleave(channels // rows, dim=0)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _cox_de_boor(x: torch.Tensor, t: torch.Tensor, order: int) -> torch.Tensor:
    # x (..., C, 1), t (C, NK) → (..., C, NK − 1 − order); the recursion of passes/kan/basis.py.
    bases = ((x >= t[:, :-1]) & (x < t[:, 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (x - t[:, : -(p + 1)]) / (t[:, p:-1] - t[:, : -(p + 1)])
        right = (t[:, p + 1:] - x) / (t[:, p + 1:] - t[:, 1:-p])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def bspline_basis_reference(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """The (..., C, G+k) basis values of x (..., C) on ``knots`` (K, G+2k+1) (see the module docstring)."""
    dtype = _compute_dtype(x)
    t = _channel_knots(knots.to(dtype), x.shape[-1])
    return _cox_de_boor(x.to(dtype).unsqueeze(-1), t, order).to(x.dtype)


def bspline_basis_backward_reference(grad: torch.Tensor, x: torch.Tensor, knots: torch.Tensor,
                                     order: int) -> torch.Tensor:
    """dx = Σ_m grad_m · dB^k_m/dx for grad (..., C, G+k), by the closed-form derivative."""
    dtype = _compute_dtype(x)
    if order == 0:  # piecewise constant: zero derivative almost everywhere
        return torch.zeros_like(x)
    t = _channel_knots(knots.to(dtype), x.shape[-1])
    lower = _cox_de_boor(x.to(dtype).unsqueeze(-1), t, order - 1)  # (..., C, G+k+1)
    left = order / (t[:, order:-1] - t[:, : -(order + 1)])
    right = order / (t[:, order + 1:] - t[:, 1:-order])
    d = left * lower[..., :-1] - right * lower[..., 1:]
    return (grad.to(dtype) * d).sum(-1).to(x.dtype)
