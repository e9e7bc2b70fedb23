"""Fitting the KAN-family functions to a target function on samples of their real inputs.

Every fit is weighted by the distribution it is given (the samples themselves), in float64, so a layer is
fitted where its pre-activations actually lie — not on a fixed range (METHODS.md A.2's surgery note: a
GELU fit on [−3, 3] fails on MiniLM, whose pre-activations reach −17 and +25).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F

from surgeon.passes.kan.basis import bspline_basis
from surgeon.passes.kan.layers import DEN_DEGREE, NUM_DEGREE

Fn = Callable[[torch.Tensor], torch.Tensor]
SK_ITERATIONS = 10  # re-weighted linearised solves before L-BFGS (see _rational_fit)



def lbfgs_minimise(params: list[torch.Tensor], loss_fn, iters: int) -> None:
    """Minimise ``loss_fn()`` over ``params`` (leaf tensors requiring grad) with strong-Wolfe L-BFGS."""
    opt = torch.optim.LBFGS(params, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=50)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

@contextmanager
def one_thread():
    """Run the block on one intra-op thread, then restore the count. Why: the rational objective has several
    basins; before the SK start (see :func:`_rational_fit`) L-BFGS picked one by rounding-level differences and
    multi-threaded reductions (whose split can vary with load) changed the result from run to run. One thread
    keeps thread splits out of it; the SK start makes fits from other sample orders and CPUs land close."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rational_fit(samples: torch.Tensor, target: Fn, *, iters: int = 300, weights: torch.Tensor | None = None,
                 per_group: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`_rational_fit`; run on one thread (see :func:`one_thread`)."""
    with one_thread():
        return _rational_fit(samples, target, iters=iters, weights=weights, per_group=per_group)


def _rational_fit(samples: torch.Tensor, target: Fn, *, iters: int, weights: torch.Tensor | None,
                  per_group: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit KAT's group rational to ``target`` on samples (groups, N): numerator (6,) shared (or (groups, 6) with
    ``per_group``), denominators (groups, 4).

    Least squares in a scaled variable t = x / s (s = max |x|), so powers up to 5 stay well conditioned:
    first the linearised problem P(t) − f·(Q(t) − 1) = f over all samples, re-solved a few times with each
    sample's row divided by the previous Q (Sanathanan–Koerner, so it approaches the true error P/Q − f), then
    L-BFGS on the true objective Σ_g mean_x (P/Q_g − f)² over the numerator and every denominator (with
    ``per_group``, then again with the numerator copied to every group and freed). ``weights`` (groups, N),
    if given, weight each sample's squared error (e.g. by its channel's down-projection column norm²).
    """
    x = samples.double()
    f = target(x).double()
    s = float(x.abs().max().clamp_min(1e-6))
    t = x / s
    tp = torch.stack([t ** i for i in range(NUM_DEGREE + 1)], -1)                  # (g, N, 6)
    at = torch.stack([t.abs() ** j for j in range(1, DEN_DEGREE + 1)], -1)        # (g, N, 4)
    w = torch.ones_like(x) if weights is None else weights.double() / weights.double().mean()
    root = w.sqrt()
    sol = _linearised_rational(tp, at, f, root)
    for _ in range(SK_ITERATIONS):
        # Why: from the plain linearised start L-BFGS ended in one of several basins picked by rounding (CPU
        # vector width, sample order), up to 7x worse; from the SK start it reached the same, lower loss for
        # every sample order tried (tests/passes/test_kan_refine.py).
        q = 1 + (at * sol[NUM_DEGREE + 1:].abs()).sum(-1)
        sol = _linearised_rational(tp, at, f, root / q)
    alpha = sol[: NUM_DEGREE + 1].clone().requires_grad_(True)
    beta = sol[NUM_DEGREE + 1:].abs().repeat(x.shape[0], 1).clone().requires_grad_(True)
    scale = (w * f.pow(2)).mean().clamp_min(1e-12)

    def loss_fn():
        p = (tp * (alpha[:, None, :] if alpha.dim() == 2 else alpha)).sum(-1)
        q = 1 + (at * beta.abs()[:, None, :]).sum(-1)
        return (w * (p / q - f) ** 2).mean() / scale

    lbfgs_minimise([alpha, beta], loss_fn, iters)
    if per_group:  # from the shared fit, each group's numerator is freed (independent per-group starts from
        # their own linearised problems land in worse minima on groups holding outlier channels: measured)
        alpha = alpha.detach().repeat(x.shape[0], 1).requires_grad_(True)
        lbfgs_minimise([alpha, beta], loss_fn, iters)
    powers_num = torch.tensor([s ** -i for i in range(NUM_DEGREE + 1)], dtype=torch.float64)
    powers_den = torch.tensor([s ** -j for j in range(1, DEN_DEGREE + 1)], dtype=torch.float64)
    return alpha.detach() * powers_num, beta.detach().abs() * powers_den


def _linearised_rational(tp: torch.Tensor, at: torch.Tensor, f: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """Least-squares solution (10,) of row_weight·(P(t) − f·(Q(t) − 1)) = row_weight·f over every group's samples:
    the numerator's 6 coefficients, then the 4 denominator coefficients (signed; callers take |·|)."""
    design = row_weight[..., None] * torch.cat([tp, -f[..., None] * at], -1)        # (g, N, 10)
    rhs = row_weight * f
    return torch.linalg.lstsq(design.reshape(-1, design.shape[-1]), rhs.reshape(-1, 1)).solution.squeeze(1)


def spline_fit(samples: torch.Tensor, knots: torch.Tensor, order: int, target: Fn, *,
               ridge: float = 1e-10, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``w·SiLU(x) + Σ c_m B_m(x) ≈ target(x)`` per channel on samples (N, C).

    Returns (w (C,), c (C, G+k)). A tiny ridge (relative to the Gram diagonal) keeps basis functions that no sample reaches at zero.
    """
    x = samples.double()
    f = target(x).double()
    b = bspline_basis(x, knots.double(), order)                                    # (N, C, G+k)
    design = torch.cat([F.silu(x)[..., None], b], -1).transpose(0, 1)              # (C, N, M)
    if weights is not None:  # (N, C) per-sample weights of the squared error
        root = weights.double().T.sqrt()[..., None]
        design, f = root * design, (root[..., 0] * f.T).T
    gram = design.transpose(1, 2) @ design
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
    gram = gram + ridge * scale * torch.eye(gram.shape[-1], dtype=gram.dtype)
    rhs = design.transpose(1, 2) @ f.T[..., None]
    sol = torch.linalg.solve(gram, rhs).squeeze(-1)
    return sol[:, 0], sol[:, 1:]


def gaussian_gain(fn: Fn, *, n: int = 200_000, seed: int = 0) -> float:
    """KAT's variance-preserving gain α with α² = E[F(x)²] / Var(x), x ~ N(0, 1), by Monte Carlo."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    with torch.no_grad():
        return math.sqrt(float(fn(x[:, None]).double().pow(2).mean()))
