"""Further univariate bases of the KAN family as plain tensor functions (METHODS.md A.3, A.4a, A.5).

* Fourier (Fourier-KAN / KArAt): ``cos(m u), sin(m u)`` for m = 1..G.
* Truncated powers (TruKAN): ``u^p`` (p = 1..k; the constant goes to the bias) and ``(u − t_m)_+^k``.
* Ordered knots: ``t = lo + (hi − lo)·cumsum(δ)[:M] / Σδ`` with ``δ = softplus(raw) + ε`` over M+1 gaps, so the
  M knots stay strictly inside (lo, hi) and ordered whatever ``raw`` is.
* DARUAN (QKAN's single-qubit data re-uploading circuit, "pz" ansatz) in closed form: the 2-vector state
  evolved by RZ/RY rotations in real arithmetic, measured as ⟨Z⟩ = |α|² − |β|² (or QKAN's "fast" |α| − |β|).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KNOT_EPS = 1e-4


def fourier_features(u: torch.Tensor, terms: int) -> torch.Tensor:
    """(..., C) → (..., C, 2G): ``[cos(1u) .. cos(Gu), sin(1u) .. sin(Gu)]``."""
    m = torch.arange(1, terms + 1, dtype=u.dtype, device=u.device)
    mu = u.unsqueeze(-1) * m
    return torch.cat([torch.cos(mu), torch.sin(mu)], -1)


def truncated_power_features(u: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    """(..., C) with knots broadcastable to (..., C, M) → (..., C, k + M): ``u^1..u^k, (u − t_m)_+^k``."""
    v = u.unsqueeze(-1)
    trunc = torch.relu(v - knots) ** degree
    powers = [(v ** p).expand(*trunc.shape[:-1], 1) for p in range(1, degree + 1)]
    return torch.cat(powers + [trunc], -1)


def ordered_knots(raw: torch.Tensor) -> torch.Tensor:
    """Knots (..., M) in (−1, 1) from unconstrained gaps ``raw`` (..., M+1), strictly increasing."""
    delta = F.softplus(raw) + KNOT_EPS
    cum = torch.cumsum(delta, -1)
    return -1 + 2 * cum[..., :-1] / cum[..., -1:]


def uniform_knot_raw(shape: tuple[int, ...], knots: int) -> torch.Tensor:
    """``raw`` (*shape, M+1) whose :func:`ordered_knots` are the interior points of linspace(−1, 1, M+2)."""
    gap = 2.0 / (knots + 1) - KNOT_EPS
    return torch.full((*shape, knots + 1), math.log(math.expm1(gap)))


def daruan(x: torch.Tensor, theta: torch.Tensor, pre_w: torch.Tensor, pre_b: torch.Tensor,
           reps: int, fast: bool = False) -> torch.Tensor:
    """⟨Z⟩ of QKAN's pz circuit per element: x (...), theta (..., r+1, 2), pre_w/pre_b (..., r) broadcastable.

    State H|0⟩; for ℓ = 0..r−1: RZ(θ_ℓ0), RY(θ_ℓ1), RZ(w_ℓ x + b_ℓ); then RZ(θ_r0), RY(θ_r1).
    RZ(φ) = diag(e^{−iφ/2}, e^{iφ/2}), RY(φ) = [[c, −s], [s, c]] with c, s = cos φ/2, sin φ/2.
    ``reps`` is a plain int so the loop stays a Python loop under fx.
    """
    h = 1 / math.sqrt(2)
    ar, ai = torch.full_like(x, h), torch.zeros_like(x)
    br, bi = torch.full_like(x, h), torch.zeros_like(x)

    def rz(phi, ar, ai, br, bi):
        c, s = torch.cos(phi / 2), torch.sin(phi / 2)
        # α e^{−iφ/2}, β e^{iφ/2}
        return ar * c + ai * s, ai * c - ar * s, br * c - bi * s, bi * c + br * s

    def ry(phi, ar, ai, br, bi):
        c, s = torch.cos(phi / 2), torch.sin(phi / 2)
        return c * ar - s * br, c * ai - s * bi, s * ar + c * br, s * ai + c * bi

    for layer in range(reps):
        ar, ai, br, bi = rz(theta[..., layer, 0], ar, ai, br, bi)
        ar, ai, br, bi = ry(theta[..., layer, 1], ar, ai, br, bi)
        ar, ai, br, bi = rz(pre_w[..., layer] * x + pre_b[..., layer], ar, ai, br, bi)
    ar, ai, br, bi = rz(theta[..., reps, 0], ar, ai, br, bi)
    ar, ai, br, bi = ry(theta[..., reps, 1], ar, ai, br, bi)
    pa, pb = ar * ar + ai * ai, br * br + bi * bi
    if fast:
        return torch.sqrt(pa + 1e-30) - torch.sqrt(pb + 1e-30)
    return pa - pb
