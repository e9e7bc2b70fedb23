"""``surgeon::gated_act``: the Triton kernels on CUDA, the torch reference elsewhere; autograd.

``kind`` is ``silu`` (SwiGLU), ``gelu`` or ``gelu_tanh`` (GeGLU), or ``rational`` (KAT's group rational on
the gate, which then needs ``numerator`` (6,) and ``denominator`` (g, 4)); ``multiplier`` (D,) is optional.
"""

from __future__ import annotations

import torch

from .reference import gated_act_backward_reference, gated_act_reference


@torch.library.custom_op("surgeon::gated_act", mutates_args=())
def gated_act(gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None, kind: str,
              numerator: torch.Tensor | None = None, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """act(gate)·up·m for gate, up (..., D) and m (D,) or None."""
    if gate.is_cuda:
        from .triton_kernel import gated_act_forward

        return gated_act_forward(gate, up, multiplier, kind, numerator, denominator)
    return gated_act_reference(gate, up, multiplier, kind, numerator, denominator)


@gated_act.register_fake
def _(gate, up, multiplier, kind, numerator=None, denominator=None):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("surgeon::gated_act_backward", mutates_args=())
def gated_act_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None,
                       kind: str, numerator: torch.Tensor | None = None, denominator: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d gate, d up, d multiplier, d numerator, d denominator) of :func:`gated_act`; a gradient whose input
    is absent is empty (0,)."""
    if gate.is_cuda:
        from .triton_kernel import gated_act_backward as triton_backward

        grads = triton_backward(grad, gate, up, multiplier, kind, numerator, denominator)
    else:
        grads = gated_act_backward_reference(grad, gate, up, multiplier, kind, numerator, denominator)
    return tuple(g if g is not None else gate.new_empty(0) for g in grads)


@gated_act_backward.register_fake
def _(grad, gate, up, multiplier, kind, numerator=None, denominator=None):
    def like(t):
        return torch.empty_like(t) if t is not None else gate.new_empty(0)

    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(up, memory_format=torch.contiguous_format), like(multiplier), like(numerator),
            like(denominator))


def _setup(ctx, inputs, output):
    gate, up, multiplier, kind, numerator, denominator = inputs
    ctx.save_for_backward(gate, up, multiplier, numerator, denominator)
    ctx.kind = kind


def _backward(ctx, grad):
    gate, up, multiplier, numerator, denominator = ctx.saved_tensors
    dg, du, dm, dn, dd = gated_act_backward(grad.contiguous(), gate, up, multiplier, ctx.kind, numerator,
                                            denominator)
    return (dg, du, dm if multiplier is not None else None, None, dn if numerator is not None else None,
            dd if denominator is not None else None)


gated_act.register_autograd(_backward, setup_context=_setup)
