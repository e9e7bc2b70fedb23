"""``surgeon::bspline_basis``: the Triton kernels on CUDA, the torch reference elsewhere; autograd w.r.t. x.

``knots`` is (K, G+2k+1) with K dividing the channel count; it takes no gradient (a buffer the KAN pass
adapts to calibration data, never trained by backprop). float64 inputs always take the reference (the
kernel computes in float32).
"""

from __future__ import annotations

import torch

from .reference import bspline_basis_backward_reference, bspline_basis_reference


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype != torch.float64


@torch.library.custom_op("surgeon::bspline_basis", mutates_args=())
def bspline_basis(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """The order-``order`` B-spline bases (..., C, G+k) of x (..., C) on ``knots`` (K, G+2k+1)."""
    if _use_triton(x):
        from .triton_kernel import bspline_basis_forward

        return bspline_basis_forward(x, knots, order)
    return bspline_basis_reference(x, knots, order)


@bspline_basis.register_fake
def _(x, knots, order):
    return x.new_empty(*x.shape, knots.shape[1] - 1 - order)


@torch.library.custom_op("surgeon::bspline_basis_backward", mutates_args=())
def bspline_basis_backward(grad: torch.Tensor, x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """dx = Σ_m grad_m · dB_m/dx of :func:`bspline_basis`."""
    if _use_triton(x):
        from .triton_kernel import bspline_basis_backward as triton_backward

        return triton_backward(grad, x, knots, order)
    return bspline_basis_backward_reference(grad, x, knots, order)


@bspline_basis_backward.register_fake
def _(grad, x, knots, order):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    x, knots, order = inputs
    ctx.save_for_backward(x, knots)
    ctx.order = order


def _backward(ctx, grad):
    x, knots = ctx.saved_tensors
    return bspline_basis_backward(grad.contiguous(), x, knots, ctx.order), None, None


bspline_basis.register_autograd(_backward, setup_context=_setup)
