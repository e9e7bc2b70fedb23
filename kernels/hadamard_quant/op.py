"""``surgeon::hadamard_quant``: block-Hadamard rotation + int8 per-token quantisation; Triton on CUDA, the
torch reference elsewhere. Inference only (codes have no gradient)."""

from __future__ import annotations

import torch

from .reference import hadamard_quant_reference


@torch.library.custom_op("surgeon::hadamard_quant", mutates_args=())
def hadamard_quant(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (..., D), float32 scales (..., 1)) of x rotated by blocks of ``block`` channels."""
    x2d = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        from .triton_kernel import hadamard_quant_forward

        q, s = hadamard_quant_forward(x2d, block)
    else:
        q, s = hadamard_quant_reference(x2d, block)
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


@hadamard_quant.register_fake
def _(x, block):
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device))
