"""``surgeon::kron_quant``: FlatQuant's Kronecker transform + per-token fake quantisation; Triton on CUDA, the
torch reference elsewhere.

Autograd: the backward recomputes the reference under autograd (straight-through rounding) and
differentiates it for x, P1 and P2: a correct but unfused training path, enough for FlatQuant-style
calibration of the transforms; ``clip`` and ``clip_hi`` (the lower- and upper-end clip ratios; ``clip_hi``
defaults to ``clip``) are plain floats and take no gradient.
"""

from __future__ import annotations

from typing import Optional

import torch

from .reference import kron_quant_reference


@torch.library.custom_op("surgeon::kron_quant", mutates_args=())
def kron_quant(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, bits: int, symmetric: bool,
               clip: float, clip_hi: Optional[float] = None) -> torch.Tensor:
    """Per-token fake-quantised x·(P1 ⊗ P2) for x (..., n1·n2), in x's dtype."""
    if x.is_cuda and x.dtype != torch.float64:
        from .triton_kernel import kron_quant_forward

        return kron_quant_forward(x, p1, p2, bits, symmetric, clip, clip_hi)
    return kron_quant_reference(x, p1, p2, bits, symmetric, clip, clip_hi)


@kron_quant.register_fake
def _(x, p1, p2, bits, symmetric, clip, clip_hi=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    x, p1, p2, bits, symmetric, clip, clip_hi = inputs
    ctx.save_for_backward(x, p1, p2)
    ctx.args = (bits, symmetric, clip, clip_hi)


def _backward(ctx, grad):
    x, p1, p2 = ctx.saved_tensors
    wanted = ctx.needs_input_grad[:3]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(w) for t, w in zip((x, p1, p2), wanted)]
        y = kron_quant_reference(*leaves, *ctx.args)
        inputs = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(y, inputs, grad) if inputs else ())
    return (*(next(grads) if w else None for w in wanted), None, None, None, None)


kron_quant.register_autograd(_backward, setup_context=_setup)
