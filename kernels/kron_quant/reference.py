"""FlatQuant's Kronecker transform + per-token fake quantisation in plain torch: the kernel's specification.

x (..., n) with n = n1·n2, P1 (n1, n1), P2 (n2, n2) (METHODS.md B.7). The transform is y = x·(P1 ⊗ P2),
computed per token as Y_t = P1ᵀ·(X_t·P2) with X_t = x_t.reshape(n1, n2), then flattened back to n. Each
token is then fake-quantised to ``bits`` bits with the conventions of ``passes/quant`` (formats.py), so a
FlatQuant layer built on its token quantizers computes the same numbers:

    lo = clip·min_j y_j,  hi = clip_hi·max_j y_j      (clip, clip_hi ∈ (0, 1]: FlatQuant's LAC ratios;
                                                    clip_hi defaults to clip; passes/quant's LWC/LAC
                                                    keeps one for each end)
    symmetric:  Δ = max(|lo|, |hi|) / (2^{b−1} − 1),  z = 0,            q ∈ [−2^{b−1}, 2^{b−1} − 1]
    asymmetric: Δ = (hi − lo) / (2^b − 1),            z = round(−lo/Δ), q ∈ [0, 2^b − 1]
    Δ clamped to [1e-5, 1e4];  q = clamp(round(y·(1/Δ)) + z),  ŷ = (q − z)·Δ

(rounding half to even; the range is not widened to contain 0, OmniQuant's convention). Float32 inside,
returned in x's dtype. Rounding passes gradients straight through (forward values are unaffected), so the
reference is differentiable in x, P1 and P2 as FlatQuant's calibration needs.
"""

from __future__ import annotations

import torch

SCALE_MIN, SCALE_MAX = 1e-5, 1e4  # passes/quant/formats.py's step clamp (OmniQuant's)


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def kron_transform_reference(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """y = x·(P1 ⊗ P2) in float32, as Y_t = P1ᵀ·(X_t·P2) per token (shape of x)."""
    n1, n2 = p1.shape[0], p2.shape[0]
    if x.shape[-1] != n1 * n2:
        raise ValueError(f"width {x.shape[-1]} is not n1·n2 = {n1}·{n2}")
    xt = x.float().reshape(-1, n1, n2)
    y = p1.float().t() @ (xt @ p2.float())
    return y.reshape(x.shape)


def check_clips(clip: float, clip_hi: float | None) -> float:
    """Validate the clip ratios; returns the upper one (``clip`` when ``clip_hi`` is None)."""
    clip_hi = clip if clip_hi is None else clip_hi
    for c in (clip, clip_hi):
        if not 0.0 < c <= 1.0:
            raise ValueError(f"clip ratio {c} must lie in (0, 1]")
    return clip_hi


def kron_quant_reference(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, bits: int, symmetric: bool = True,
                         clip: float = 1.0, clip_hi: float | None = None) -> torch.Tensor:
    """Fake-quantised y = x·(P1 ⊗ P2), per token (see the module docstring), in x's dtype."""
    clip_hi = check_clips(clip, clip_hi)
    y = kron_transform_reference(x, p1, p2)
    lo = clip * y.amin(-1, keepdim=True)
    hi = clip_hi * y.amax(-1, keepdim=True)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        step = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp(SCALE_MIN, SCALE_MAX)
        zero = torch.zeros_like(step)
    else:
        qmin, qmax = 0, 2**bits - 1
        step = ((hi - lo) / qmax).clamp(SCALE_MIN, SCALE_MAX)
        zero = torch.round(-lo / step)
    q = torch.clamp(_round_ste(y * (1.0 / step)) + zero, qmin, qmax)
    return ((q - zero) * step).to(x.dtype)
