"""Function-preserving refinements of built KAN modules (structure changes plus their value fits).

* Grid extension (pykan's ``refine``): a B-spline of G intervals becomes one of G' intervals whose G'+1
  inner points interpolate the old inner points piecewise linearly, with the old k outer knots on each side
  kept; coefficients are the least-squares fit of the old spline on dense points of the whole old knot span.
  For G' = mG the new knot vector contains the old one, so the new spline space contains the old spline
  (knot insertion) and the result is exact everywhere; otherwise it is a close fit.
* Reps extension (QKAN's ``layer_extension``): reps r → r' inserts r' − r layers before the final rotation
  with θ = 0 and encoding weight and bias 0, so each new layer is RZ(0)RY(0)RZ(0) = I: exact.
* Collapse (S-KAN's last phase): a selectable mixture keeps only its strongest candidate (mean |mix|), then
  refits that candidate (all its parameters, its mix row and the base) to the whole mixture's function by
  least squares on the module's recorded inputs (float64 L-BFGS), so the collapse moves the outputs as little
  as that candidate allows; a plain drop of the others is exact only when their mix weights are 0.

Each ``resize_*`` changes shapes only (works on ``meta``, used by replay); ``refine_*`` also sets values.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from surgeon.passes.kan.basis import bspline_basis
from surgeon.passes.kan.extra_layers import GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.fit import lbfgs_minimise
from surgeon.passes.kan.layers import BSplineKANLinear, GroupBSpline


def _coef_name(module: nn.Module) -> str:
    return "coef" if isinstance(module, GroupBSpline) else "spline_weight"


def resize_grid(module: GroupBSpline | BSplineKANLinear, grid: int) -> None:
    """Give ``module`` the shapes of a ``grid``-interval spline (values unspecified)."""
    name = _coef_name(module)
    old = getattr(module, name)
    shape = (*old.shape[:-1], grid + module.order)
    module.register_buffer("knots", torch.empty(module.knots.shape[0], grid + 2 * module.order + 1,
                                                dtype=module.knots.dtype, device=module.knots.device))
    setattr(module, name, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                       requires_grad=old.requires_grad))
    module.grid = grid


def refine_points(knots: torch.Tensor, order: int, grid: int) -> torch.Tensor:
    """G'+1 points per row interpolating the old inner points (C, G+1) piecewise linearly."""
    inner = knots[:, order:knots.shape[1] - order]                                  # (C, G+1)
    old = inner.shape[1] - 1
    pos = torch.linspace(0, old, grid + 1, dtype=knots.dtype, device=knots.device)
    left = pos.floor().long().clamp(max=old - 1)
    frac = pos - left
    return inner[:, left] * (1 - frac) + inner[:, left + 1] * frac


@torch.no_grad()
def refine_grid(module: GroupBSpline | BSplineKANLinear, grid: int, points_per_interval: int = 40) -> None:
    """Grid extension in place (see module docstring)."""
    order, name = module.order, _coef_name(module)
    knots = module.knots.double()
    coef = getattr(module, name).double()                                           # (C, G+k) | (out, C, G+k)
    rows = coef[:, None, :] if isinstance(module, GroupBSpline) else coef.transpose(0, 1)  # (C, R, G+k)
    fine = torch.cat([knots[:, :order], refine_points(knots, order, grid), knots[:, knots.shape[1] - order:]], 1)
    lo, hi = knots[:, 0], knots[:, -1]
    n = points_per_interval * (max(grid, module.grid) + 2 * order)
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    x = lo[None, :] + (hi - lo)[None, :] * t[:, None]                               # (N, C), the whole span
    x = torch.minimum(x, torch.nextafter(hi, lo)[None, :])  # the right end is outside the half-open basis
    old_vals = torch.einsum("ncm,crm->cnr", bspline_basis(x, knots, order), rows)    # (C, N, R)
    design = bspline_basis(x, fine, order).transpose(0, 1)                          # (C, N, G'+k)
    sol = torch.linalg.lstsq(design, old_vals).solution                             # (C, G'+k, R)
    dtype = getattr(module, name).dtype
    resize_grid(module, grid)
    module.knots.copy_(fine.to(module.knots.dtype))
    new = sol.permute(0, 2, 1)                                                      # (C, R, G'+k)
    value = new[:, 0, :] if isinstance(module, GroupBSpline) else new.transpose(0, 1)
    getattr(module, name).copy_(value.to(dtype))


def resize_reps(module: GroupDaruan | QKANLinear, reps: int) -> None:
    """Give ``module`` the shapes of ``reps`` re-uploading layers (values unspecified)."""
    for name, extra in (("theta", 1), ("pre_w", 0), ("pre_b", 0)):
        old = getattr(module, name)
        shape = (*old.shape[:-2], reps + extra, 2) if name == "theta" else (*old.shape[:-1], reps)
        setattr(module, name, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                           requires_grad=old.requires_grad))
    module.reps = reps


@torch.no_grad()
def refine_reps(module: GroupDaruan | QKANLinear, reps: int) -> None:
    """Reps extension in place: new layers with θ = 0 and encoding 0·x + 0, before the final rotation."""
    old_r = module.reps
    theta, pre_w, pre_b = module.theta.detach().clone(), module.pre_w.detach().clone(), module.pre_b.detach().clone()
    resize_reps(module, reps)
    module.theta.zero_()
    module.theta[..., :old_r, :] = theta[..., :old_r, :]
    module.theta[..., reps, :] = theta[..., old_r, :]
    module.pre_w.zero_()
    module.pre_b.zero_()
    module.pre_w[..., :old_r] = pre_w
    module.pre_b[..., :old_r] = pre_b


def collapse_refit(module: Selectable, keep: int, x: torch.Tensor, iters: int = 150) -> tuple[float, float]:
    """Collapse ``module`` to candidate ``keep`` and refit it to the mixture on input rows ``x`` (R, C).

    Returns the relative error ‖collapsed − mixture‖/‖mixture‖ on ``x`` of the plain drop and of the result.
    The refit starts from the plain drop and only replaces it when it is closer, so it never makes it worse.
    """
    x = x.double()
    with torch.no_grad():
        target = copy.deepcopy(module).double()(x)
    module.prune(keep)
    work = copy.deepcopy(module).double()
    norm = target.pow(2).mean().clamp_min(1e-300)

    def relative() -> float:
        with torch.no_grad():
            return float(((work(x) - target).pow(2).mean() / norm).sqrt())

    drop = relative()
    params = [p for p in work.parameters() if p.requires_grad]
    if not params or not x.shape[0]:
        return drop, drop
    lbfgs_minimise(params, lambda: (work(x) - target).pow(2).mean() / norm, iters)
    refit = relative()
    if refit < drop:  # L-BFGS on a non-convex basis (DARUAN) could in principle end worse than its start
        with torch.no_grad():
            module.load_state_dict(work.state_dict())
        return drop, refit
    return drop, drop
