"""KAN-family layers: plain ``nn.Module``s whose parameters and buffers are all made from sizes in ``__init__``.

Shapes: activations map (..., C) → (..., C); KAN layers map (..., in) → (..., out). Channels are split into
``groups`` contiguous groups of C / groups channels (KAT's layout). ``base`` is the function the learnable
part is added to: ``None`` for the paper's *pure* form, the model's own activation (or ``nn.Identity``) for
the *residual* form, which starts with zero coefficients and is exactly the original function at init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.passes.kan.basis import bspline_basis, rational

NUM_DEGREE, DEN_DEGREE = 5, 4  # KAT's (m, n) = (5, 4)


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.unflatten(-1, (groups, -1))


class GroupRational(nn.Module):
    """KAT's group-rational activation ``F(x) = base(x) + P(x)/Q_g(x)`` (..., C) → (..., C).

    ``numerator`` (6,) is shared by every group (KAT's layout), or (groups, 6) with ``per_group_numerator``;
    ``denominator`` (groups, 4) is per group; Q = 1 + Σ_j |b_j| |x|^j as the released kernels compute it.
    Computed in fp32 at least (like the CUDA forward), cast back to the input dtype.
    """

    def __init__(self, width: int, groups: int = 8, base: nn.Module | None = None,
                 per_group_numerator: bool = False):
        super().__init__()
        if width % groups:
            raise ValueError(f"width {width} is not divisible by groups {groups}")
        self.width, self.groups = width, groups
        self.base = base
        self.per_group = per_group_numerator
        shape = (groups, NUM_DEGREE + 1) if per_group_numerator else (NUM_DEGREE + 1,)
        self.numerator = nn.Parameter(torch.zeros(shape))
        self.denominator = nn.Parameter(torch.zeros(groups, DEN_DEGREE))
        if base is None:  # pure form starts as the identity, KAT's F1
            with torch.no_grad():
                self.numerator[..., 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = rational(_grouped(x.to(dtype), self.groups), self.numerator.to(dtype), self.denominator.to(dtype),
                     (NUM_DEGREE, DEN_DEGREE), self.per_group)
        y = y.flatten(-2).to(x.dtype)
        return y if self.base is None else self.base(x) + y

    def extra_repr(self) -> str:
        return (f"width={self.width}, groups={self.groups}, form={'pure' if self.base is None else 'residual'}"
                + (", numerator per group" if self.per_group else ""))


class GroupBSpline(nn.Module):
    """Per-group B-spline activation ``F(x) = base(x) + w_g·SiLU(x) + Σ_m c_gm B_m(x)`` (..., C) → (..., C).

    ``knots`` (groups, G+2k+1) is a buffer (adapted to calibration inputs by the pass), ``silu`` (groups,)
    and ``coef`` (groups, G+k) are learnable. Pure form: base None (pykan's SiLU + spline edge).
    """

    def __init__(self, width: int, groups: int = 8, grid: int = 5, order: int = 3, base: nn.Module | None = None):
        super().__init__()
        if width % groups:
            raise ValueError(f"width {width} is not divisible by groups {groups}")
        self.width, self.groups, self.grid, self.order = width, groups, grid, order
        self.base = base
        uniform = torch.linspace(-1, 1, grid + 1)
        step = 2.0 / grid
        knots = torch.cat([uniform[0] - step * torch.arange(order, 0, -1), uniform,
                           uniform[-1] + step * torch.arange(1, order + 1)])
        self.register_buffer("knots", knots.repeat(groups, 1))
        self.silu = nn.Parameter(torch.zeros(groups))
        self.coef = nn.Parameter(torch.zeros(groups, grid + order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xg = _grouped(x.to(dtype), self.groups)  # (..., g, w)
        b = bspline_basis(xg.transpose(-1, -2), self.knots.to(dtype), self.order)  # (..., w, g, G+k)
        y = (b * self.coef.to(dtype)).sum(-1).transpose(-1, -2) + self.silu.to(dtype)[:, None] * F.silu(xg)
        y = y.flatten(-2).to(x.dtype)
        return y if self.base is None else self.base(x) + y

    def extra_repr(self) -> str:
        return (f"width={self.width}, groups={self.groups}, grid={self.grid}, order={self.order}, "
                f"form={'pure' if self.base is None else 'residual'}")


class PreActivated(nn.Module):
    """``linear(act(x))``: KAT's F1 in front of a kept Linear-like module (nn.Linear or GPT-2 Conv1D)."""

    def __init__(self, act: nn.Module, linear: nn.Module):
        super().__init__()
        self.act, self.linear = act, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.act(x))


class HQKANResidual(nn.Module):
    """``linear(h) + out(core(inp(h)))``: the MLP's kept down projection plus an HQKAN branch (residual ``hqkan``).

    h (..., hidden) is the down projection's input; ``inp`` Linear(hidden, k), ``core`` a pure KAN layer (k, k)
    and ``out`` Linear(k, width) form QKAN's bottleneck. ``out`` starts at zero (weight and bias), so the module
    equals ``linear`` exactly until the branch is trained. Why the branch reads h and not the MLP input: the down
    projection is where the MLP's output is formed in every MLP kind (plain, gated, BERT's split pair, MLPs
    inlined in a decoder layer), so the branch is one module swap with no side channel between modules.
    """

    def __init__(self, linear: nn.Module, core: nn.Module, hidden: int, k: int, width: int):
        super().__init__()
        self.linear, self.core = linear, core
        self.inp = nn.Linear(hidden, k)
        self.out = nn.Linear(k, width)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h) + self.out(self.core(self.inp(h)))


class BSplineKANLinear(nn.Module):
    """efficient-kan's KANLinear (..., in) → (..., out): every edge i→j is its own SiLU + B-spline function.

    ``y_j = Σ_i base_weight_ji·b(x_i) + Σ_i Σ_m spline_weight_jim B_m(x_i) + bias_j`` with ``b = SiLU``
    (pure form) or ``b(x) = x`` (residual form, where base_weight/bias hold the original Linear and the
    spline starts at zero). ``knots`` (in, G+2k+1) is per input channel. No standalone spline scaler:
    it multiplies ``spline_weight`` and adds no function.
    """

    def __init__(self, in_features: int, out_features: int, grid: int = 5, order: int = 3,
                 residual: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.grid, self.order = in_features, out_features, grid, order
        self.residual = residual
        self.register_buffer("knots", GroupBSpline(1, 1, grid, order).knots.repeat(in_features, 1))
        self.base_weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.zeros(out_features, in_features, grid + order))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dtype)
        base = xf if self.residual else F.silu(xf)
        b = bspline_basis(xf, self.knots.to(dtype), self.order).flatten(-2)  # (..., in·(G+k))
        y = F.linear(base, self.base_weight.to(dtype), self.bias.to(dtype))
        y = y + F.linear(b, self.spline_weight.to(dtype).flatten(1))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, grid={self.grid}, order={self.order}, "
                f"form={'residual' if self.residual else 'pure'}")


class RationalKANLinear(nn.Module):
    """KAT's GR-KAN layer (..., in) → (..., out): ``linear(F(x))`` with ``F`` a :class:`GroupRational`."""

    def __init__(self, in_features: int, out_features: int, groups: int = 8, residual: bool = False,
                 per_group_numerator: bool = False):
        super().__init__()
        self.rational = GroupRational(in_features, groups, nn.Identity() if residual else None, per_group_numerator)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rational(x))
