"""The gated activation in plain torch: the specification the Triton kernels must match.

For gate and up of shape (..., D) and an optional per-channel multiplier m of shape (D,):

    y = act(gate) · up · m,   act ∈ {silu (SwiGLU), gelu (GeGLU, erf form), gelu_tanh (GeGLU, tanh form),
                                      rational (KAT's group rational P/Q, see kernels/group_rational)}.

m = 1 when absent (a 0/1 m is a channel mask, a learned m a gate multiplier). ``rational`` takes a
numerator (6,) shared by all channels and denominators (g, 4), one per contiguous group of D/g channels;
the other kinds take neither. Computed in float32, returned in gate's dtype. Gradients: dgate =
g·up·m·act'(gate), dup = g·act(gate)·m, dm = Σ_rows g·act(gate)·up, and for ``rational`` the coefficient
gradients of the group rational evaluated with the incoming gradient g·up·m.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..group_rational.reference import group_rational_backward_reference, group_rational_reference

ACTS = ("silu", "gelu", "gelu_tanh", "rational")
Coefficients = tuple[torch.Tensor, torch.Tensor] | None  # (numerator (6,), denominator (g, 4)) for "rational"
_K = math.sqrt(2.0 / math.pi)


def _coefficients(kind: str, numerator: torch.Tensor | None, denominator: torch.Tensor | None) -> Coefficients:
    if (kind == "rational") != (numerator is not None and denominator is not None):
        raise ValueError(f"kind {kind!r}: numerator and denominator are required for 'rational' and only for it")
    return (numerator, denominator) if kind == "rational" else None


def activation(x: torch.Tensor, kind: str, numerator: torch.Tensor | None = None,
               denominator: torch.Tensor | None = None) -> torch.Tensor:
    """act(x) in x's dtype (``rational`` needs its numerator and denominator)."""
    if _coefficients(kind, numerator, denominator) is not None:
        return group_rational_reference(x, numerator, denominator)
    if kind == "silu":
        return F.silu(x)
    if kind in ("gelu", "gelu_tanh"):
        return F.gelu(x, approximate="none" if kind == "gelu" else "tanh")
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTS}")


def activation_grad(x: torch.Tensor, kind: str) -> torch.Tensor:
    """act'(x) in closed form."""
    if kind == "silu":
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
    if kind == "gelu":
        return 0.5 * (1 + torch.erf(x * math.sqrt(0.5))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if kind == "gelu_tanh":
        t = torch.tanh(_K * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K * (1 + 3 * 0.044715 * x * x)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTS}")


def gated_act_reference(gate: torch.Tensor, up: torch.Tensor, multiplier: torch.Tensor | None, kind: str,
                        numerator: torch.Tensor | None = None, denominator: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """y = act(gate)·up·m (see the module docstring)."""
    y = activation(gate.float(), kind, numerator, denominator) * up.float()
    if multiplier is not None:
        y = y * multiplier.float()
    return y.to(gate.dtype)


def gated_act_backward_reference(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                                 multiplier: torch.Tensor | None, kind: str, numerator: torch.Tensor | None = None,
                                 denominator: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None,
                                            torch.Tensor | None]:
    """(d gate, d up, d multiplier, d numerator, d denominator) in closed form, float32 inside; d multiplier
    is None without a multiplier, the coefficient gradients are None unless ``kind`` is ``rational``."""
    coefficients = _coefficients(kind, numerator, denominator)
    g, x, u = grad.float(), gate.float(), up.float()
    m = multiplier.float() if multiplier is not None else torch.ones((), device=x.device)
    a = activation(x, kind, numerator, denominator)
    d_num = d_den = None
    if coefficients is None:
        d_gate = (g * u * m * activation_grad(x, kind)).to(gate.dtype)
    else:  # the group rational's own closed-form backward, fed the gradient reaching act(gate)
        d_x, d_num, d_den = group_rational_backward_reference(g * u * m, x, numerator, denominator)
        d_gate = d_x.to(gate.dtype)
    d_up = (g * a * m).to(up.dtype)
    d_m = None
    if multiplier is not None:
        d_m = (g * a * u).reshape(-1, x.shape[-1]).sum(0).to(multiplier.dtype)
    return d_gate, d_up, d_m, d_num, d_den
