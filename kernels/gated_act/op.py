"""``surgeon::gated_act``: the Triton kernels on CUDA, the torch reference elsewhere; autograd.

``kind`` is ``silu`` (SwiGLU), ``gelu`` or ``gelu_tanh`` (GeGLU); ``multiplier`` (D,) is optional.
"""

from __future__ import annotations

import torch

from .reference import gated_act_backward_reference, gated_act_reference


@torch.library.custom_op("surgeon::gated_act", mutates_args=())
def gated_act(gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None, kind: str) -> torch.Tensor:
    """act(gate)·up·m for gate, up (..., D) and m (D,) or None."""
    if gate.is_cuda:
        from .triton_kernel import gated_act_forward

        return gated_act_forward(gate, up, multiplier, kind)
    return gated_act_reference(gate, up, multiplier, kind)


@gated_act.register_fake
def _(gate, up, multiplier, kind):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("surgeon::gated_act_backward", mutates_args=())
def gated_act_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None,
                       kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d gate, d up, d multiplier) of :func:`gated_act`; d multiplier is empty (0,) without a multiplier."""
    if gate.is_cuda:
        from .triton_kernel import gated_act_backward as triton_backward

        dg, du, dm = triton_backward(grad, gate, up, multiplier, kind)
    else:
        dg, du, dm = gated_act_backward_reference(grad, gate, up, multiplier, kind)
    return dg, du, dm if dm is not None else gate.new_empty(0)


@gated_act_backward.register_fake
def _(grad, gate, up, multiplier, kind):
    dm = torch.empty_like(multiplier) if multiplier is not None else gate.new_empty(0)
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(up, memory_format=torch.contiguous_format), dm)


def _setup(ctx, inputs, output):
    gate, up, multiplier, kind = inputs
    ctx.save_for_backward(gate, up, multiplier)
    ctx.kind = kind


def _backward(ctx, grad):
    gate, up, multiplier = ctx.saved_tensors
    dg, du, dm = gated_act_backward(grad.contiguous(), gate, up, multiplier, ctx.kind)
    return dg, du, (dm if multiplier is not None else None), None


gated_act.register_autograd(_backward, setup_context=_setup)
