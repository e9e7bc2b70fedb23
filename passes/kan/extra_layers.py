"""Layers of the further KAN bases: Fourier, TruKAN, DARUAN (QKAN) and S-KAN's selectable mixture.

Shapes: group activations map (..., C) → (..., C) with C split into ``groups`` contiguous groups; KAN layers
map (..., in) → (..., out). Every parameter and buffer is made from sizes in ``__init__``.

Input range: TruKAN reads ``u = (2x − lo − hi) / (hi − lo)`` and Fourier ``π`` times it, with buffers
``lo``/``hi`` (−1, 1 for TruKAN and −π, π for Fourier at construction, i.e. the papers' ``u = x``); fits set
them to the samples' range, so the data fill one Fourier period and TruKAN's (−1, 1) knot range. This is an affine
reparameterisation: truncated powers and polynomials of u span the same functions as of x, and it keeps
Fourier frequencies and x³ growth sensible on pre-activations that reach ±20 (TruKAN's LayerNorm advice).

Group activations are ``F(x) = base(x) + w_g·x + c_g + Σ_m coef_gm φ_m(u)`` (``base`` None: pure form,
starting as the identity, w = 1). KAN layers are ``y = x Wᵀ + bias + Σ_i Σ_m coef_jim φ_m(u_i)`` with a
linear base branch (KArAt's identity base; TruKAN's polynomial already contains x) that holds the original
Linear in the residual form, where the coefficients start at zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.passes.kan.extra_basis import (daruan, fourier_features, ordered_knots, truncated_power_features,
                                            uniform_knot_raw)

KNOT_MODES = ("fixed", "shared", "individual")


def _check_groups(width: int, groups: int) -> None:
    if width % groups:
        raise ValueError(f"width {width} is not divisible by groups {groups}")


class _Features(nn.Module):
    """Shared feature code of the Fourier and TruKAN modules over ``rows`` functions (groups or channels)."""

    def _setup(self, rows: int, basis: str, terms: int, degree: int, knots: int, knot_mode: str,
               outputs: int = 0) -> None:
        if basis not in ("fourier", "trukan"):
            raise ValueError(f"unknown basis {basis!r}")
        if knot_mode not in KNOT_MODES:
            raise ValueError(f"unknown knot mode {knot_mode!r}")
        self.basis, self.terms, self.degree, self.num_knots, self.knot_mode = basis, terms, degree, knots, knot_mode
        half = math.pi if basis == "fourier" else 1.0  # u = x at construction
        self.register_buffer("lo", torch.full((rows,), -half))
        self.register_buffer("hi", torch.full((rows,), half))
        self.features = 2 * terms if basis == "fourier" else degree + knots
        if basis == "trukan":
            if knot_mode == "fixed":
                self.register_buffer("knots", ordered_knots(uniform_knot_raw((rows,), knots)))
            elif knot_mode == "individual" and outputs:
                self.knot_raw = nn.Parameter(uniform_knot_raw((outputs, rows), knots))
            else:  # shared (and "individual" for activations, where each group has one function)
                self.knot_raw = nn.Parameter(uniform_knot_raw((rows,), knots))

    def knot_values(self) -> torch.Tensor:
        """The knots in u-space: (rows, M), or (out, in, M) for individual knots of a KAN layer."""
        return self.knots if self.knot_mode == "fixed" else ordered_knots(self.knot_raw)

    def phi(self, x: torch.Tensor, knots: torch.Tensor | None = None) -> torch.Tensor:
        """Features (..., rows, F) of x (..., rows) (``knots`` overrides, broadcastable to (..., rows, M))."""
        u = (2 * x - self.lo - self.hi) / (self.hi - self.lo)
        if self.basis == "fourier":
            return fourier_features(math.pi * u, self.terms)
        return truncated_power_features(u, self.knot_values() if knots is None else knots, self.degree)

    def _repr(self) -> str:
        if self.basis == "fourier":
            return f"basis=fourier, terms={self.terms}"
        return f"basis=trukan, degree={self.degree}, knots={self.num_knots} ({self.knot_mode})"


class GroupBasis(_Features):
    """Fourier or TruKAN group activation ``F(x) = base(x) + w_g x + c_g + Σ_m coef_gm φ_m(u)`` (..., C) → (..., C).

    ``linear``/``const`` (groups,), ``coef`` (groups, F); TruKAN knots per group (buffer when ``fixed``,
    ``knot_raw`` (groups, M+1) otherwise).
    """

    def __init__(self, width: int, groups: int = 8, basis: str = "fourier", terms: int = 5, degree: int = 3,
                 knots: int = 6, knot_mode: str = "fixed", base: nn.Module | None = None):
        super().__init__()
        _check_groups(width, groups)
        self.width, self.groups, self.base = width, groups, base
        self._setup(groups, basis, terms, degree, knots, knot_mode)
        self.linear = nn.Parameter(torch.ones(groups) if base is None else torch.zeros(groups))
        self.const = nn.Parameter(torch.zeros(groups))
        self.coef = nn.Parameter(torch.zeros(groups, self.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xg = x.to(dtype).unflatten(-1, (self.groups, -1)).transpose(-1, -2)          # (..., w, g)
        phi = self.phi(xg)                                                           # (..., w, g, F)
        y = (phi * self.coef.to(dtype)).sum(-1) + self.linear.to(dtype) * xg + self.const.to(dtype)
        y = y.transpose(-1, -2).flatten(-2).to(x.dtype)
        return y if self.base is None else self.base(x) + y

    def scale_output(self, scale: torch.Tensor) -> None:
        """Multiply each group's learnable part by ``scale`` (groups,) (S-KAN collapse)."""
        with torch.no_grad():
            for p in (self.linear, self.const):
                p.mul_(scale)
            self.coef.mul_(scale[:, None])

    def extra_repr(self) -> str:
        return f"width={self.width}, groups={self.groups}, {self._repr()}, form={'pure' if self.base is None else 'residual'}"


class BasisKANLinear(_Features):
    """Fourier-KAN / TruKAN layer (..., in) → (..., out): ``y = x Wᵀ + bias + Σ_i Σ_m coef_jim φ_m(u_i)``.

    ``weight`` (out, in), ``bias`` (out,), ``coef`` (out, in, F); ``lo``/``hi`` per input channel. TruKAN knots:
    ``fixed`` buffer (in, M), ``shared`` ``knot_raw`` (in, M+1), ``individual`` ``knot_raw`` (out, in, M+1)
    (a (…, out, in, F) basis tensor: heavier, as in the TruKAN code). Both forms start with zero coefficients.
    """

    def __init__(self, in_features: int, out_features: int, basis: str = "fourier", terms: int = 5,
                 degree: int = 3, knots: int = 6, knot_mode: str = "fixed"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._setup(in_features, basis, terms, degree, knots, knot_mode, outputs=out_features)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.coef = nn.Parameter(torch.zeros(out_features, in_features, self.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dtype)
        y = F.linear(xf, self.weight.to(dtype), self.bias.to(dtype))
        if self.basis == "trukan" and self.knot_mode == "individual":
            phi = self.phi(xf.unsqueeze(-2), self.knot_values())                     # (..., out, in, F)
            y = y + (phi * self.coef.to(dtype)).sum((-1, -2))
        else:
            y = y + F.linear(self.phi(xf).flatten(-2), self.coef.to(dtype).flatten(1))
        return y.to(x.dtype)

    def scale_output(self, scale: torch.Tensor) -> None:
        """Multiply output channel j by ``scale[j]`` (S-KAN collapse)."""
        with torch.no_grad():
            self.weight.mul_(scale[:, None])
            self.bias.mul_(scale)
            self.coef.mul_(scale[:, None, None])

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self._repr()}"


class GroupDaruan(nn.Module):
    """QKAN's DARUAN as a group activation (..., C) → (..., C):
    ``F(x) = base(x) + post_w_g (⟨Z⟩_g(x) + post_b_g) + base_w_g SiLU(x)``.

    ``theta`` (groups, r+1, 2), ``pre_w``/``pre_b`` (groups, r) (the encoding RZ(w x + b); trainable when
    ``preact_trainable``, else fixed at 1/0 as in QKAN), ``post_w``/``post_b``/``base_w`` (groups,).
    ``fast``: QKAN's |α| − |β| instead of the true ⟨Z⟩. Pure form starts at QKAN's defaults (θ = 0, post 1/0,
    base 0); residual form with ``post_w = 0`` (exact).
    """

    def __init__(self, width: int, groups: int = 8, reps: int = 3, preact_trainable: bool = True,
                 fast: bool = False, base: nn.Module | None = None):
        super().__init__()
        _check_groups(width, groups)
        self.width, self.groups, self.reps, self.fast, self.base = width, groups, reps, fast, base
        self.theta = nn.Parameter(torch.zeros(groups, reps + 1, 2))
        self.pre_w = nn.Parameter(torch.ones(groups, reps), requires_grad=preact_trainable)
        self.pre_b = nn.Parameter(torch.zeros(groups, reps), requires_grad=preact_trainable)
        self.post_w = nn.Parameter(torch.ones(groups) if base is None else torch.zeros(groups))
        self.post_b = nn.Parameter(torch.zeros(groups))
        self.base_w = nn.Parameter(torch.zeros(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xg = x.to(dtype).unflatten(-1, (self.groups, -1)).transpose(-1, -2)          # (..., w, g)
        z = daruan(xg, self.theta.to(dtype), self.pre_w.to(dtype), self.pre_b.to(dtype), self.reps, self.fast)
        y = self.post_w.to(dtype) * (z + self.post_b.to(dtype)) + self.base_w.to(dtype) * F.silu(xg)
        y = y.transpose(-1, -2).flatten(-2).to(x.dtype)
        return y if self.base is None else self.base(x) + y

    def scale_output(self, scale: torch.Tensor) -> None:
        """Multiply each group's learnable part by ``scale`` (groups,) (S-KAN collapse)."""
        with torch.no_grad():
            self.post_w.mul_(scale)
            self.base_w.mul_(scale)

    def extra_repr(self) -> str:
        return (f"width={self.width}, groups={self.groups}, reps={self.reps}, "
                f"measure={'fast' if self.fast else 'expectation'}, form={'pure' if self.base is None else 'residual'}")


class QKANLinear(nn.Module):
    """QKAN layer (..., in) → (..., out): ``y_j = Σ_i post_w_ji (⟨Z⟩_ji(x_i) + post_b_ji) + Σ_i base_w_ji SiLU(x_i)
    + (x Wᵀ + bias)_j``.

    Per-edge ``theta`` (out, in, r+1, 2), ``pre_w``/``pre_b`` (out, in, r), ``post_w``/``post_b``/``base_w``
    (out, in) as in QKAN's QKANLayer; ``weight``/``bias`` is a linear branch (zero in the paper's form; the
    original Linear in the residual form, where ``post_w`` starts at 0). Memory is (..., out, in) per call.
    """

    def __init__(self, in_features: int, out_features: int, reps: int = 3, preact_trainable: bool = True,
                 fast: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.reps, self.fast = in_features, out_features, reps, fast
        shape = (out_features, in_features)
        self.theta = nn.Parameter(torch.zeros(*shape, reps + 1, 2))
        self.pre_w = nn.Parameter(torch.ones(*shape, reps), requires_grad=preact_trainable)
        self.pre_b = nn.Parameter(torch.zeros(*shape, reps), requires_grad=preact_trainable)
        self.post_w = nn.Parameter(torch.zeros(shape))
        self.post_b = nn.Parameter(torch.zeros(shape))
        self.base_w = nn.Parameter(torch.zeros(shape))
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dtype)
        z = daruan(xf.unsqueeze(-2), self.theta.to(dtype), self.pre_w.to(dtype), self.pre_b.to(dtype), self.reps,
                   self.fast)                                                        # (..., out, in)
        y = (self.post_w.to(dtype) * (z + self.post_b.to(dtype))).sum(-1)
        y = y + F.linear(F.silu(xf), self.base_w.to(dtype)) + F.linear(xf, self.weight.to(dtype), self.bias.to(dtype))
        return y.to(x.dtype)

    def scale_output(self, scale: torch.Tensor) -> None:
        """Multiply output channel j by ``scale[j]`` (S-KAN collapse)."""
        with torch.no_grad():
            for p in (self.post_w, self.base_w, self.weight):
                p.mul_(scale[:, None])
            self.bias.mul_(scale)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, reps={self.reps}, "
                f"measure={'fast' if self.fast else 'expectation'}")


class Selectable(nn.Module):
    """S-KAN's selectable mixture ``y = base(x) + Σ_s mix_s ⊙ candidate_s(x)``.

    ``candidates``: pure modules of the same shape (group activations or KAN layers). ``mix`` (S, rows) is
    per group for activations (``groups`` > 0) and per output channel for KAN layers (rows = out, groups 0).
    ``names`` says which basis each candidate is. :meth:`prune` keeps one candidate (the collapse step).
    """

    def __init__(self, candidates: list[nn.Module], names: list[str], rows: int, groups: int = 0,
                 base: nn.Module | None = None):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.names = list(names)
        self.groups, self.base = groups, base
        start = 0.0 if base is not None else 1.0 / len(candidates)
        self.mix = nn.Parameter(torch.full((len(candidates), rows), start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        for s, cand in enumerate(self.candidates):
            w = self.mix[s]
            if self.groups:
                w = w.repeat_interleave(x.shape[-1] // self.groups)
            term = cand(x) * w.to(x.dtype)
            y = term if y is None else y + term
        return y if self.base is None else self.base(x) + y

    def strengths(self) -> torch.Tensor:
        """Mean |mix| per candidate (S,): what the collapse step ranks."""
        return self.mix.detach().abs().mean(-1)

    def prune(self, keep: int) -> None:
        """Keep candidate ``keep`` only (structure only: works on ``meta``)."""
        self.candidates = nn.ModuleList([self.candidates[keep]])
        self.names = [self.names[keep]]
        self.mix = nn.Parameter(self.mix.detach()[keep:keep + 1].clone())

    def extra_repr(self) -> str:
        return f"candidates={self.names}, form={'pure' if self.base is None else 'residual'}"
