"""RepQuant / RepQ-ViT: per-channel (dual-clipped) LayerNorm-output quantizer re-parameterised to per tensor.

A per-channel asymmetric quantizer on a LayerNorm output y (steps Δ_c, integer zeros z_c, from the
channel's lower/upper clip bounds, learnable with ``lwc``) is traded for a per-tensor one (Δ̃ = mean Δ_c,
z̃ = round(mean z_c)) by changing the LayerNorm and the Linears reading it:
r = Δ/Δ̃, b = min/r − m̃ with min_c = −z_c·Δ_c and m̃ = −z̃·Δ̃; γ ← γ/r, β ← β/r − b; W ← W·diag(r),
bias ← bias + W_new·b. Then round(y'/Δ̃) + z̃ = round(y/Δ_c) + z_c, so the integer codes are the same
and the Linear outputs equal the per-channel ones (up to fp rounding near ties). Rounding z̃ to an integer
is our choice: it makes that identity hold exactly in exact arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.passes.quant import formats as F
from surgeon.passes.quant.quantizers import Quantizer


@torch.no_grad()
def fold_dual_clip(norm: nn.LayerNorm, readers: list[nn.Linear], quant: Quantizer) -> Quantizer:
    """Fold ``quant`` (int, asym, ``channel``, static) into ``norm`` and ``readers``; return the per-tensor
    quantizer (``int<b>-asym-tensor-lsq`` holding Δ̃ and z̃) to put on the readers' shared input."""
    s = quant.spec
    if s.fmt != "int" or s.symmetric or s.granularity != "channel" or quant.role == "weight":
        raise ValueError(f"fold_dual_clip needs an int asym per-channel activation quantizer, got {s.text()}")
    lo, hi = quant.clipped(quant.lo, quant.hi)
    step_c, zero_c = F.uniform_params(lo.double(), hi.double(), s.bits, False)
    step_t, zero_t = step_c.mean(), torch.round(zero_c.mean())
    r = step_c / step_t
    shift = (-zero_c * step_c) / r - (-zero_t * step_t)
    norm.weight.copy_((norm.weight.double() / r).to(norm.weight.dtype))
    norm.bias.copy_((norm.bias.double() / r - shift).to(norm.bias.dtype))
    for lin in readers:
        w = lin.weight.double() * r[None, :]
        lin.weight.copy_(w.to(lin.weight.dtype))
        if lin.bias is None:
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
        lin.bias.copy_((lin.bias.double() + w @ shift).to(lin.bias.dtype))
    out = Quantizer(f"int{s.bits}-asym-tensor-lsq", quant.role, quant.shape).to(quant.lo.device)
    out.step.copy_(step_t.reshape(1))
    out.zero.copy_(zero_t.reshape(1))
    out.lo.copy_(-zero_t * step_t)
    out.hi.copy_((2**s.bits - 1 - zero_t) * step_t)
    return out
