"""Fits of the Fourier, TruKAN and DARUAN functions to a target on samples of their real inputs (float64).

* Fourier / TruKAN (linear in their coefficients): the input range ``lo``/``hi`` is set to the samples' range
  (so u ∈ [−1, 1] where the data lie), then linear least squares of ``w x + c + Σ coef_m φ_m(u)`` with a
  tiny ridge; TruKAN fits use the current (uniform at construction) knots.
* DARUAN (not linear in θ): the encoding scale starts at π / max|x| (trainable pre-activations; QKAN's fixed
  RZ(x) otherwise), θ from a seeded N(0, 1), the linear heads (post weight/bias, SiLU base) by least squares,
  then L-BFGS on every parameter of the true objective.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from surgeon.passes.kan.extra_basis import daruan, fourier_features, truncated_power_features
from surgeon.passes.kan.extra_layers import BasisKANLinear, GroupBasis, GroupDaruan, QKANLinear
from surgeon.passes.kan.fit import lbfgs_minimise

Fn = Callable[[torch.Tensor], torch.Tensor]


def _lstsq(design: torch.Tensor, f: torch.Tensor, ridge: float = 1e-10) -> torch.Tensor:
    """Per-row ridge least squares: design (R, N, M), f (R, N) → (R, M), on RMS-normalised columns."""
    col = design.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)             # (R, 1, M)
    a = design / col
    gram = a.transpose(1, 2) @ a
    gram = gram + ridge * len(design[0]) * torch.eye(gram.shape[-1], dtype=gram.dtype)
    return torch.linalg.solve(gram, a.transpose(1, 2) @ f[..., None]).squeeze(-1) / col.squeeze(1)


@torch.no_grad()
def fit_features(module: GroupBasis | BasisKANLinear, samples: torch.Tensor, target: Fn) -> tuple[torch.Tensor, ...]:
    """Set ``lo``/``hi`` from samples (N, rows) and fit ``w x + c + Σ coef φ(u)`` per row: (w, c, coef)."""
    x = samples.double()
    f = target(x).double()
    lo, hi = x.min(0).values, x.max(0).values
    pad = 1e-3 * (hi - lo).clamp_min(1e-3)
    module.lo.copy_(lo - pad)
    module.hi.copy_(hi + pad)
    knots = None
    if module.basis == "trukan" and module.knot_mode == "individual" and isinstance(module, BasisKANLinear):
        knots = module.knot_values()[0]  # uniform at fit time: every output shares the first row's knots
    phi = _phi64(module, x, knots)
    design = torch.cat([x[..., None], torch.ones_like(x)[..., None], phi], -1).transpose(0, 1)
    sol = _lstsq(design, f.T)
    return sol[:, 0], sol[:, 1], sol[:, 2:]


def _phi64(module, x: torch.Tensor, knots: torch.Tensor | None) -> torch.Tensor:
    """The module's features of x (N, rows) computed in float64 from its current range and knots."""
    u = (2 * x - module.lo.double() - module.hi.double()) / (module.hi.double() - module.lo.double())
    if module.basis == "fourier":
        return fourier_features(math.pi * u, module.terms)
    knots = module.knot_values() if knots is None else knots
    return truncated_power_features(u, knots.detach().double(), module.degree)


@torch.no_grad()
def fit_group_basis(module: GroupBasis, pooled: torch.Tensor, target: Fn) -> None:
    """Pure Fourier/TruKAN group activation fitted to ``target`` on pooled group samples (groups, N)."""
    w, c, coef = fit_features(module, pooled.T, target)
    module.linear.copy_(w)
    module.const.copy_(c)
    module.coef.copy_(coef)


def fit_daruan(samples: torch.Tensor, target: Fn, reps: int, preact_trainable: bool, fast: bool, *,
               seed: int = 0, iters: int = 200) -> dict[str, torch.Tensor]:
    """DARUAN parameters per row fitted to ``target`` on samples (rows, N): θ, pre_w, pre_b, post_w, post_b, base_w."""
    x = samples.double()
    f = target(x).double()
    rows = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(rows, reps + 1, 2, generator=gen, dtype=torch.float64)
    scale = math.pi / x.abs().amax(1).clamp_min(1e-6) if preact_trainable else torch.ones(rows, dtype=torch.float64)
    pre_w = scale[:, None].repeat(1, reps).clone()
    pre_b = torch.zeros(rows, reps, dtype=torch.float64)
    z = daruan(x, theta[:, None], pre_w[:, None], pre_b[:, None], reps, fast)
    design = torch.stack([z, torch.ones_like(z), F.silu(x)], -1)
    heads = _lstsq(design, f, ridge=1e-8)
    post_w, base_w = heads[:, 0].clone(), heads[:, 2].clone()
    safe = torch.where(post_w.abs() > 1e-8, post_w, torch.ones_like(post_w))
    post_b = heads[:, 1] / safe  # the head is post_w·(z + post_b)
    params = [theta, post_w, post_b, base_w] + ([pre_w, pre_b] if preact_trainable else [])
    for p in params:
        p.requires_grad_(True)
    norm = f.pow(2).mean().clamp_min(1e-12)

    def loss_fn():
        zz = daruan(x, theta[:, None], pre_w[:, None], pre_b[:, None], reps, fast)
        y = post_w[:, None] * (zz + post_b[:, None]) + base_w[:, None] * F.silu(x)
        return ((y - f) ** 2).mean() / norm

    lbfgs_minimise(params, loss_fn, iters)
    return {k: v.detach() for k, v in dict(theta=theta, pre_w=pre_w, pre_b=pre_b, post_w=post_w, post_b=post_b,
                                            base_w=base_w).items()}


@torch.no_grad()
def fit_group_daruan(module: GroupDaruan, pooled: torch.Tensor, target: Fn, seed: int = 0) -> None:
    """Pure DARUAN group activation fitted to ``target`` on pooled group samples (groups, N)."""
    if pooled.shape[1] > 4096:  # L-BFGS over every circuit parameter: 4k samples per group, drawn with the seed
        pooled = pooled[:, torch.randperm(pooled.shape[1], generator=torch.Generator().manual_seed(seed))[:4096]]
    fitted = fit_daruan(pooled, target, module.reps, module.pre_w.requires_grad, module.fast, seed=seed)
    for name, value in fitted.items():
        getattr(module, name).copy_(value)


@torch.no_grad()
def fit_edges(layer: BasisKANLinear | QKANLinear, samples: torch.Tensor, target: Fn, weight: torch.Tensor,
              bias: torch.Tensor, seed: int = 0, max_rows: int = 4096) -> None:
    """Pure KAN layer whose edge i→j starts as ``weight_ji · f_i``, f_i ≈ ``target`` fitted on channel i."""
    if isinstance(layer, BasisKANLinear):
        w, c, coef = fit_features(layer, samples, target)
        layer.weight.copy_(weight * w[None, :])
        layer.bias.copy_(bias + weight @ c)
        layer.coef.copy_(weight[:, :, None] * coef[None])
        return
    x = samples.T
    if x.shape[1] > max_rows:
        x = x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    fitted = fit_daruan(x, target, layer.reps, layer.pre_w.requires_grad, layer.fast, seed=seed)
    out = layer.out_features
    layer.theta.copy_(fitted["theta"].expand(out, -1, -1, -1))
    layer.pre_w.copy_(fitted["pre_w"].expand(out, -1, -1))
    layer.pre_b.copy_(fitted["pre_b"].expand(out, -1, -1))
    layer.post_w.copy_(weight * fitted["post_w"][None, :])
    layer.post_b.copy_(fitted["post_b"].expand(out, -1))
    layer.base_w.copy_(weight * fitted["base_w"][None, :])
    layer.weight.zero_()
    layer.bias.copy_(bias)


@torch.no_grad()
def set_residual(layer: BasisKANLinear | QKANLinear, samples: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> None:
    """Residual KAN layer: the original Linear in the linear branch, zero corrections, ranges from the samples."""
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    if isinstance(layer, BasisKANLinear):
        x = samples.double()
        lo, hi = x.min(0).values, x.max(0).values
        pad = 1e-3 * (hi - lo).clamp_min(1e-3)
        layer.lo.copy_(lo - pad)
        layer.hi.copy_(hi + pad)
