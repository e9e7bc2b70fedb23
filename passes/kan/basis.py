"""The univariate function bases of the KAN family, as plain tensor functions (METHODS.md A.1, A.2).

* B-splines of order ``k`` on a knot vector of ``G + 2k + 1`` points (G intervals plus ``k`` extra knots each
  side), evaluated for every basis index at once by the Cox–de Boor recursion vectorised over knots.
* KAT's group rational ``P(x) / Q(x)`` with ``P = Σ_{i≤5} a_i x^i`` and ``Q = 1 + Σ_{j≤4} |b_j| |x|^j``: the
  denominator of the released CUDA/Triton kernels (never below 1, so no poles), not the paper's safe-Padé
  ``1 + |Σ b_j x^j|`` nor the torch reference's signed odd powers.
"""

from __future__ import annotations

import torch


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """B-spline values: ``x`` (..., C) on per-channel knots ``grid`` (C, G+2k+1) → (..., C, G+k).

    A point outside the extended grid gets all zeros (only a base branch can follow it there).
    """
    x = x.unsqueeze(-1)
    # Order 0: indicator of [t_m, t_{m+1}).
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (x - grid[:, : -(p + 1)]) / (grid[:, p:-1] - grid[:, : -(p + 1)])
        right = (grid[:, p + 1:] - x) / (grid[:, p + 1:] - grid[:, 1:-p])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def extend_knots(points: torch.Tensor, order: int) -> torch.Tensor:
    """Knot vectors (C, G+2k+1) from G+1 ordered points per channel (C, G+1): k knots added on each side.

    The added knots use the mean interval of each channel, as pykan and efficient-kan do for uniform grids.
    """
    step = (points[:, -1:] - points[:, :1]) / (points.shape[1] - 1)
    ks = torch.arange(1, order + 1, dtype=points.dtype, device=points.device)
    below = points[:, :1] - step * ks.flip(0)
    above = points[:, -1:] + step * ks
    return torch.cat([below, points, above], dim=1)


def adaptive_knots(samples: torch.Tensor, grid_size: int, order: int, grid_eps: float = 0.02,
                   margin: float = 0.01) -> torch.Tensor:
    """Knots per channel from samples (N, C): ``grid_eps``·uniform + (1−``grid_eps``)·quantile points.

    This is efficient-kan's ``update_grid``: G+1 sample quantiles blended with a uniform grid over
    [min − margin, max + margin], then extended by ``order`` knots on each side.
    """
    s = samples.double()
    q = torch.linspace(0, 1, grid_size + 1, dtype=s.dtype, device=s.device)
    adaptive = torch.quantile(s, q, dim=0).T  # (C, G+1)
    lo, hi = s.min(0).values - margin, s.max(0).values + margin
    uniform = lo[:, None] + (hi - lo)[:, None] * q[None, :]
    points = grid_eps * uniform + (1 - grid_eps) * adaptive
    # Strictly increasing knots: repeated quantiles (a channel with few distinct values) would divide by 0.
    ramp = 1e-6 * torch.arange(grid_size + 1, dtype=s.dtype, device=s.device)
    points = torch.cummax(points, dim=1).values + ramp
    return extend_knots(points, order)


def rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
             degrees: tuple[int, int] = (5, 4), per_group: bool = False) -> torch.Tensor:
    """``P(x) / Q(x)`` for x (..., g, w) with numerator (m+1,) shared (or (g, m+1) with ``per_group``) and
    denominator (g, n) per group.

    ``degrees`` (m, n) and ``per_group`` are plain Python values so the loops stay Python loops under fx tracing.
    """
    m, n = degrees
    a = numerator.unsqueeze(-2) if per_group else numerator                         # (g, 1, m+1) | (m+1,)
    p = a[..., m].expand_as(x)
    for i in range(m - 1, -1, -1):  # Horner: a_m, ..., a_0
        p = p * x + a[..., i]
    ax = x.abs()
    b = denominator.abs()[:, None, :]  # (g, 1, n)
    q = torch.zeros_like(x)
    for j in range(n - 1, -1, -1):  # Horner on |x|: Σ_{j=1..n} |b_j| |x|^j
        q = (q + b[..., j]) * ax
    return p / (1 + q)
