"""``surgeon::w4a16_linear``: the Triton kernel on CUDA, the torch reference elsewhere (inference only)."""

from __future__ import annotations

import torch

from .reference import w4a16_linear_reference


@torch.library.custom_op("surgeon::w4a16_linear", mutates_args=())
def w4a16_linear(x: torch.Tensor, codes: torch.Tensor, step: torch.Tensor, zero: torch.Tensor,
                 bias: torch.Tensor | None, out_features: int, in_features: int) -> torch.Tensor:
    """x (..., in) · Wᵀ + bias with W unpacked from passes/quant's 4-bit packed codes."""
    if x.is_cuda:
        from .triton_kernel import w4a16_linear_forward

        return w4a16_linear_forward(x, codes, step, zero, bias, out_features, in_features)
    return w4a16_linear_reference(x, codes, step, zero, bias, out_features, in_features)


@w4a16_linear.register_fake
def _(x, codes, step, zero, bias, out_features, in_features):
    return x.new_empty(*x.shape[:-1], out_features)
