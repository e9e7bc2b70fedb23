"""``surgeon::fake_quant`` (static scales; STE and LSQ gradients) and ``surgeon::fake_quant_dynamic``
(per-group absmax scales computed on the fly; straight-through gradient): Triton on CUDA, the torch
reference elsewhere. Inputs are (..., D); scales and zero points are (prod(...), D // group_size)."""

from __future__ import annotations

import torch

from .reference import fake_quant_dynamic_reference, fake_quant_grads_reference, fake_quant_reference


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


@torch.library.custom_op("surgeon::fake_quant", mutates_args=())
def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, qmin: int,
               qmax: int) -> torch.Tensor:
    """(clamp(round(x/s) + z, qmin, qmax) − z) · s per (row, group)."""
    if x.is_cuda:
        from .triton_kernel import fake_quant_forward

        return fake_quant_forward(_rows(x), scale, zero, group_size, qmin, qmax).reshape(x.shape)
    return fake_quant_reference(_rows(x), scale, zero, group_size, qmin, qmax).reshape(x.shape)


@fake_quant.register_fake
def _(x, scale, zero, group_size, qmin, qmax):
    return torch.empty_like(x)


@torch.library.custom_op("surgeon::fake_quant_backward", mutates_args=())
def fake_quant_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                        group_size: int, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx by the clipped STE, d scale by LSQ) of :func:`fake_quant`."""
    if x.is_cuda:
        from .triton_kernel import fake_quant_backward as triton_backward

        dx, ds = triton_backward(_rows(grad), _rows(x), scale, zero, group_size, qmin, qmax)
    else:
        dx, ds = fake_quant_grads_reference(_rows(grad), _rows(x), scale, zero, group_size, qmin, qmax)
    return dx.reshape(x.shape), ds


@fake_quant_backward.register_fake
def _(grad, x, scale, zero, group_size, qmin, qmax):
    return torch.empty_like(x), torch.empty_like(scale)


def _setup(ctx, inputs, output):
    x, scale, zero, group_size, qmin, qmax = inputs
    ctx.save_for_backward(x, scale, zero)
    ctx.args = (group_size, qmin, qmax)


def _backward(ctx, grad):
    x, scale, zero = ctx.saved_tensors
    dx, ds = fake_quant_backward(grad.contiguous(), x, scale, zero, *ctx.args)
    return dx, ds, None, None, None, None


fake_quant.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("surgeon::fake_quant_dynamic", mutates_args=())
def fake_quant_dynamic(x: torch.Tensor, group_size: int, bits: int) -> torch.Tensor:
    """Symmetric fake quantisation with s = max|x| / (2^(bits−1) − 1) per (row, group)."""
    if x.is_cuda:
        from .triton_kernel import fake_quant_dynamic_forward

        return fake_quant_dynamic_forward(_rows(x), group_size, bits).reshape(x.shape)
    return fake_quant_dynamic_reference(_rows(x), group_size, bits).reshape(x.shape)


@fake_quant_dynamic.register_fake
def _(x, group_size, bits):
    return torch.empty_like(x)


def _dynamic_backward(ctx, grad):
    # absmax scaling maps every element inside the range: the straight-through gradient is the identity.
    return grad, None, None


fake_quant_dynamic.register_autograd(_dynamic_backward)
