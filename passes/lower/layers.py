"""Thin modules that call ``surgeon::`` ops with the parameters of the layer they replace.

Each lowered module is a subclass of the layer it replaces and holds *the same* parameter and buffer
objects under the same names (built by :func:`share`), so state-dict keys, optimisers and the
family's own helpers (``quantizers()``, observers, ``set_enabled``) keep working; only ``forward`` changes.
On CUDA the ops run the Triton kernels, elsewhere their torch references.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch import nn

import surgeon.kernels.bspline_basis.op  # noqa: F401  (registers surgeon::bspline_basis)
import surgeon.kernels.fake_quant.op  # noqa: F401  (registers surgeon::fake_quant*)
import surgeon.kernels.group_rational.op  # noqa: F401  (registers surgeon::group_rational)
import surgeon.kernels.kron_quant.op  # noqa: F401  (registers surgeon::kron_quant)
from surgeon.passes.equiv.layers import TransformedLinear
from surgeon.passes.kan.layers import BSplineKANLinear, GroupBSpline, GroupRational
from surgeon.passes.quant import formats as F
from surgeon.passes.quant.quantizers import Quantizer


def share(old: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A ``cls`` instance with ``old``'s attributes and the very same parameter/buffer/child objects."""
    new = cls.__new__(cls)
    new.__dict__.update(old.__dict__)
    for table in ("_parameters", "_buffers", "_modules"):
        new.__dict__[table] = dict(old.__dict__[table])  # own tables, shared tensors
    return new


class LoweredGroupRational(GroupRational):
    """:class:`GroupRational` whose rational part is one ``surgeon::group_rational`` call.

    Float64 inputs keep the layer's own math (the op computes in float32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        y = torch.ops.surgeon.group_rational(x, self.numerator, self.denominator)
        return y if self.base is None else self.base(x) + y


class LoweredGroupBSpline(GroupBSpline):
    """:class:`GroupBSpline` whose Cox–de Boor recursion is one ``surgeon::bspline_basis`` call (the
    per-group coefficient sum and the SiLU branch stay torch: they read the bases once).

    Float64 inputs keep the layer's own math (the op computes in float32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        xf = x.float()  # the layer computes in float32 at least
        b = torch.ops.surgeon.bspline_basis(xf, self.knots.float(), self.order)  # (..., C, G+k)
        b = b.unflatten(-2, (self.groups, -1))  # (..., g, w, G+k)
        y = (b * self.coef.float()[:, None, :]).sum(-1) + self.silu.float()[:, None] * TF.silu(
            xf.unflatten(-1, (self.groups, -1)))
        y = y.flatten(-2).to(x.dtype)
        return y if self.base is None else self.base(x) + y


class LoweredBSplineKANLinear(BSplineKANLinear):
    """:class:`BSplineKANLinear` as one ``surgeon::bspline_basis`` call feeding the spline GEMM, beside the
    base-branch GEMM: ``linear(b(x), base_weight, bias) + linear(B(x).flatten, spline_weight.flatten)``.

    Float64 inputs keep the layer's own math (the op computes in float32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        xf = x.float()  # the layer computes in float32 at least
        base = xf if self.residual else TF.silu(xf)
        b = torch.ops.surgeon.bspline_basis(xf, self.knots.float(), self.order).flatten(-2)  # (..., in·(G+k))
        y = TF.linear(base, self.base_weight.float(), self.bias.float())
        y = y + TF.linear(b, self.spline_weight.float().flatten(1))
        return y.to(x.dtype)


class _FakeQuantWithZeroGrad(torch.autograd.Function):
    """``surgeon::fake_quant`` plus the zero point's gradient (−s summed over clipped elements), which
    the op does not return; used only when the zero point carries a gradient (asymmetric rtn/lwc)."""

    @staticmethod
    def forward(ctx, x, scale, zero, group_size, qmin, qmax):
        ctx.save_for_backward(x, scale, zero)
        ctx.args = (group_size, qmin, qmax)
        return torch.ops.surgeon.fake_quant(x, scale, zero, group_size, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero = ctx.saved_tensors
        group_size = ctx.args[0]
        dx, ds = torch.ops.surgeon.fake_quant_backward(grad.contiguous(), x, scale, zero, *ctx.args)
        clipped = (grad - dx).float().reshape(x.shape[0], -1, group_size).sum(-1)  # dx = grad inside, 0 outside
        return dx, ds, (-scale.float() * clipped).to(zero.dtype), None, None, None


def static_fake_quant(x2d: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                      qmin: int, qmax: int) -> torch.Tensor:
    """``surgeon::fake_quant`` of (N, D) ``x2d`` with (N, D / group_size) scale and zero, with every
    gradient the layer's autograd would give (x, scale and, when it needs one, zero)."""
    if zero.requires_grad and torch.is_grad_enabled():
        return _FakeQuantWithZeroGrad.apply(x2d, scale, zero, group_size, qmin, qmax)
    return torch.ops.surgeon.fake_quant(x2d, scale, zero.detach(), group_size, qmin, qmax)


class LoweredQuantizer(Quantizer):
    """:class:`Quantizer` of a plain integer spec computed by ``surgeon::fake_quant`` (weights, static
    activations) or ``surgeon::fake_quant_dynamic`` (symmetric token / g<N> activations).

    Falls back to the quantizer's own math while disabled or observing, and for dynamic sites under
    autograd (the dynamic op's gradient is the identity; the layer's also flows through the absmax step).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.observer is not None:
            return super().forward(x)
        if self.role == "weight":
            return self._weight(x)
        if self.static:
            return self._static_activation(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        s = self.spec
        group = s.group if s.granularity == "group" else x.shape[-1]
        return torch.ops.surgeon.fake_quant_dynamic(x, group, s.bits)

    def _step_zero(self, x2: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        # The layer's own (step, zero) for rows x2 and range [lo, hi], and its LSQ gradient scaling.
        s = self.spec
        if s.mode == "lsq":
            factor = 1.0 / math.sqrt(max(x2.numel() // self.step.numel(), 1) * self.qmax)
            return F.grad_scale(self.step, factor), self.zero
        lo, hi = self.clipped(lo, hi)
        return F.uniform_params(lo, hi, s.bits, s.symmetric)

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        out, cols = self.shape
        w2 = self.rows(w)
        step, zero = self._step_zero(w2, w2.amin(1, keepdim=True), w2.amax(1, keepdim=True))
        if self.spec.granularity == "tensor":
            step, zero = step.reshape(1, 1).expand(out, 1), zero.reshape(1, 1).expand(out, 1)
        group = cols // step.reshape(out, -1).shape[1]
        y = static_fake_quant(w.reshape(out, cols), step.reshape(out, -1), zero.reshape(out, -1), group,
                              self.qmin, self.qmax)
        return y.reshape(w.shape)

    def _static_activation(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        x2 = x.reshape(-1, width)
        if self.spec.mode == "lsq":  # the layer scales LSQ's gradient by the whole input's size
            step = F.grad_scale(self.step, 1.0 / math.sqrt(max(x.numel() // self.step.numel(), 1) * self.qmax))
            zero = self.zero
        else:
            step, zero = self._step_zero(x2, self.lo, self.hi)
        rows = x2.shape[0]
        y = static_fake_quant(x2, step.reshape(1, 1).expand(rows, 1), zero.reshape(1, 1).expand(rows, 1), width,
                              self.qmin, self.qmax)
        return y.reshape(x.shape)


@torch.no_grad()
def lac_clips(quant: Quantizer) -> tuple[float, float]:
    """(lower, upper) clip ratios of a dynamic per-token quantizer (``rtn``'s fixed ratio, or LWC/LAC's
    σ(l), σ(u)): the quantizer's own ``clipped`` applied to a unit range."""
    one = torch.ones_like(next(iter([*quant.parameters(), *quant.buffers()])))  # (1, 1) on its device
    lo, hi = quant.clipped(one, one)
    return float(lo), float(hi)


class LoweredKronLinear(TransformedLinear):
    """A FlatQuant layer (Kronecker transform before a QuantLinear with a per-token input quantizer) whose
    transform and input quantisation are one ``surgeon::kron_quant`` call; the weight path is the layer's own.

    Computes x/s (the transform's diagonal) in torch, then x·(P1 ⊗ P2) and the per-token fake quantisation
    in the op, then the QuantLinear's matmul with its (fake-quantised) weight and its output quantizer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, linear = self.transform, self.linear
        quant = linear.input_quant
        lo, hi = lac_clips(quant)
        xs = x / t.scale.to(x.dtype)
        y = torch.ops.surgeon.kron_quant(xs, t.m1, t.m2, quant.spec.bits, quant.spec.symmetric, lo, hi)
        out = TF.linear(y, linear.quantised_weight(), linear.bias)
        return out if linear.output_quant is None else linear.output_quant(out)
