"""``surgeon::group_rational``: the Triton kernels on CUDA, the torch reference elsewhere; autograd.

Registered with ``torch.library`` so the op is one node in fx graphs and survives ``torch.export``;
the fake implementation gives shapes without running anything.
"""

from __future__ import annotations

import torch

from .reference import group_rational_backward_reference, group_rational_reference


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda


@torch.library.custom_op("surgeon::group_rational", mutates_args=())
def group_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """F(x) = P(x)/Q(x) with a shared numerator (6,) and per-group denominators (g, 4)."""
    if _use_triton(x):
        from .triton_kernel import group_rational_forward

        return group_rational_forward(x, numerator, denominator)
    return group_rational_reference(x, numerator, denominator)


@group_rational.register_fake
def _(x, numerator, denominator):
    return torch.empty_like(x)


@torch.library.custom_op("surgeon::group_rational_backward", mutates_args=())
def group_rational_backward(grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                            denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`group_rational` with respect to x, the numerator and the denominators."""
    if _use_triton(x):
        from .triton_kernel import group_rational_backward as triton_backward

        return triton_backward(grad, x, numerator, denominator)
    return group_rational_backward_reference(grad, x, numerator, denominator)


@group_rational_backward.register_fake
def _(grad, x, numerator, denominator):
    return torch.empty_like(x), torch.empty_like(numerator), torch.empty_like(denominator)


def _setup(ctx, inputs, output):
    x, numerator, denominator = inputs
    ctx.save_for_backward(x, numerator, denominator)


def _backward(ctx, grad):
    x, numerator, denominator = ctx.saved_tensors
    return group_rational_backward(grad.contiguous(), x, numerator, denominator)


group_rational.register_autograd(_backward, setup_context=_setup)
