"""The lowering table: one :class:`Row` per ``surgeon::`` op family.

A row names the op, says which module types it looks at (``kinds``), whether a module can be lowered
(``check``; ``reason`` says why not) and builds the thin replacement (``build``). ``reason`` is also
given for look-alike layers that no op computes yet, so the report lists every layer left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from surgeon.passes.kan.layers import BSplineKANLinear, GroupBSpline, GroupRational
from surgeon.kernels.bspline_basis.triton_kernel import MAX_ORDER
from surgeon.passes.equiv.layers import TransformedLinear
from surgeon.passes.lower.layers import (LoweredBSplineKANLinear, LoweredGroupBSpline, LoweredGroupRational,
                                         LoweredKronLinear, LoweredQuantizer, share)
from surgeon.passes.quant.quantizers import Quantizer


@dataclass(frozen=True)
class Row:
    """``(name, check, build)`` with the module types the row inspects and the skip reason of a module."""

    name: str
    kinds: tuple[type, ...]
    check: Callable[[nn.Module], bool]
    build: Callable[[nn.Module], nn.Module]
    reason: Callable[[nn.Module], str | None]


def _dtype(module: nn.Module) -> torch.dtype | None:
    tensors = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) if t.is_floating_point()]
    return tensors[0].dtype if tensors else None


def rational_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a :class:`LoweredGroupRational` (None when it can)."""
    if type(module) is not GroupRational:
        return "already lowered" if isinstance(module, LoweredGroupRational) else "not a GroupRational"
    if module.numerator.dim() > 1:
        return "surgeon::group_rational shares one numerator across groups (KAT's layout); this layer has one per group"
    if (module.numerator.numel(), tuple(module.denominator.shape[1:])) != (6, (4,)):
        return "surgeon::group_rational computes degrees (5, 4) only"
    if module.numerator.dtype == torch.float64:
        return "float64 coefficients: the layer computes in float64, the op in float32"
    return None


_BSPLINE_LOWERED = {GroupBSpline: LoweredGroupBSpline, BSplineKANLinear: LoweredBSplineKANLinear}


def bspline_reason(module: nn.Module) -> str | None:
    """Why ``module`` (a B-spline KAN layer) cannot take ``surgeon::bspline_basis`` (None when it can)."""
    if type(module) not in _BSPLINE_LOWERED:
        return "already lowered" if isinstance(module, tuple(_BSPLINE_LOWERED.values())) else \
            f"{type(module).__name__}: not a GroupBSpline or BSplineKANLinear"
    if module.order > MAX_ORDER:
        return f"order {module.order}: surgeon::bspline_basis's kernel is compiled for orders up to {MAX_ORDER}"
    if module.knots.dtype == torch.float64:
        return "float64 knots: the layer computes in float64, the op in float32"
    return None


def quantizer_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a :class:`LoweredQuantizer` (None when it can).

    Lowered: ``int`` formats in ``rtn``/``lwc``/``lsq`` mode for weights (tensor, channel, g<N> with
    in % N == 0) and static ``tensor`` activations; ``int-sym-rtn`` ``token``/``g<N>`` dynamic activations
    (unclipped). Everything else computes something the ops do not.
    """
    if type(module) is not Quantizer:
        return "already lowered" if isinstance(module, LoweredQuantizer) else \
            f"{type(module).__name__}: no surgeon:: op for this quantizer"
    s = module.spec
    if s.fmt != "int":
        return f"{s.text()}: only integer grids have a surgeon:: op"
    if s.mode == "asq":
        return f"{s.text()}: ASQ's per-token adapter is not in surgeon::fake_quant"
    if _dtype(module) not in (torch.float32, None):
        return f"{_dtype(module)} quantizer: the layer computes in that dtype, the op in float32"
    if module.role == "weight":
        cols = module.shape[1]
        if s.granularity == "group" and cols % s.group:
            return f"{s.text()}: groups of {s.group} straddle weight rows of {cols}"
        return None
    if s.granularity == "channel":
        return f"{s.text()}: per-channel activation scales vary along the row (op groups hold one scale)"
    if module.static:
        return None
    if not s.symmetric:
        return f"{s.text()}: surgeon::fake_quant_dynamic is symmetric only"
    if s.mode != "rtn":
        return f"{s.text()}: surgeon::fake_quant_dynamic has no learned clipping"
    if bool((module.clip != 1).any()):
        return f"{s.text()}: clip ratio ≠ 1 (surgeon::fake_quant_dynamic uses the unclipped absmax)"
    if s.granularity == "group" and module.shape[-1] % s.group:
        return f"{s.text()}: groups of {s.group} straddle rows of {module.shape[-1]}"
    return None


def kron_reason(module: nn.Module) -> str | None:
    """Why a :class:`TransformedLinear` cannot become a :class:`LoweredKronLinear` (None when it can)."""
    from surgeon.passes.equiv.layers import KroneckerTransform
    from surgeon.passes.quant.layers import QuantLinear

    if isinstance(module, LoweredKronLinear):
        return "already lowered"
    t, linear = module.transform, module.linear
    if not isinstance(t, KroneckerTransform):
        return f"{type(t).__name__}: only Kronecker (FlatQuant) transforms have a surgeon:: op"
    if t.learnable:
        return "the transform is still learnable (run calibrate_quant first: it folds and freezes it)"
    if not isinstance(linear, QuantLinear) or linear.input_quant is None:
        return "no input quantizer after the transform: surgeon::kron_quant fuses the two"
    s = linear.input_quant.spec
    if s.fmt != "int" or s.granularity != "token" or s.mode not in ("rtn", "lwc"):
        return f"input quantizer {s.text()}: surgeon::kron_quant quantises per token on an integer grid (rtn or LAC)"
    if t.m1.dtype != torch.float32 or linear.weight.dtype != torch.float32:
        return "not float32: the layer computes in its dtype, the op in float32"
    return None


ROWS: tuple[Row, ...] = (
    Row("group_rational", (GroupRational,),
        lambda m: rational_reason(m) is None, lambda m: share(m, LoweredGroupRational), rational_reason),
    Row("bspline_basis", (GroupBSpline, BSplineKANLinear),
        lambda m: bspline_reason(m) is None, lambda m: share(m, _BSPLINE_LOWERED[type(m)]), bspline_reason),
    Row("fake_quant", (Quantizer,),
        lambda m: quantizer_reason(m) is None, lambda m: share(m, LoweredQuantizer), quantizer_reason),
    Row("kron_quant", (TransformedLinear,),
        lambda m: kron_reason(m) is None, lambda m: share(m, LoweredKronLinear), kron_reason),
)


def row_named(name: str) -> Row:
    """The row called ``name``."""
    return next(r for r in ROWS if r.name == name)
