"""Building the structure of one ``kan`` site from its record (shared by rewrite and replay).

A record is plain data: the MLP's module paths (``up``, ``gate``, ``act``, ``down``), its ``kind``
(plain | gated | split), widths, and the options that fix shapes. :func:`build` puts the new modules in the
tree with their construction-time coefficients (pure: identity rationals / zero splines; residual: zero
corrections); the pass then initialises values, and load assigns saved tensors instead.

Structures (see docs/passes/kan.md):
* ``kat``: each input projection (up, and gate for gated MLPs) becomes ``PreActivated(F1, linear)`` with the
  original weights, and the activation becomes F2 (KAT's x → F1 → fc1 → F2 → fc2).
* ``hqkan``: Linear(d, k) → KAN layer (k, k) → Linear(k, d), k = ceil(log2 d) (QKAN's HQKAN with the
  ``daruan`` basis). Gated MLPs keep the GLU product: gate and up become Linear(d, k), the activation becomes
  the KAN layer on the gate branch, the down projection Linear(k, d). Residual form: the MLP is kept and its
  down projection becomes ``HQKANResidual`` (down(h) + Linear(k, d)(KAN(Linear(d_ff, k)(h))), output
  projection zero at init: exact).
* ``kan``: each projection becomes a KAN layer of the same in/out. In plain and split MLPs the activation is
  absorbed by the second layer's edge functions (pure form) and replaced by ``nn.Identity``; in gated MLPs
  the GLU product (and its activation) stays between the layers, since a sum of univariate edges cannot form
  a product of two projections. The residual form keeps the activation everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from surgeon.passes.kan.extra_layers import BasisKANLinear, GroupBasis, GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.layers import (BSplineKANLinear, GroupBSpline, GroupRational, HQKANResidual,
                                       PreActivated, RationalKANLinear)
from surgeon.rewrite import set_submodule

MARK = "kan"


def _opts(record: dict[str, Any]) -> dict[str, Any]:
    """Shape options of the further bases (defaults for records written before they existed)."""
    return {"terms": record.get("terms", 5), "degree": record.get("degree", 3), "knots": record.get("knots", 6),
            "knot_mode": record.get("knot_mode", "fixed"), "reps": record.get("reps", 3),
            "preact_trainable": record.get("preact_trainable", True),
            "fast": record.get("measure", "expectation") == "fast"}


def activation(record: dict[str, Any], width: int, base: nn.Module | None, basis: str | None = None) -> nn.Module:
    """A group activation of the record's basis (``base`` None: pure form)."""
    basis = basis or record["basis"]
    groups, o = record["groups"], _opts(record)
    if basis == "rational":
        return GroupRational(width, groups, base, record.get("numerators", "shared") == "group")
    if basis == "bspline":
        return GroupBSpline(width, groups, record["grid"], record["order"], base)
    if basis in ("fourier", "trukan"):
        return GroupBasis(width, groups, basis, o["terms"], o["degree"], o["knots"], o["knot_mode"], base)
    if basis == "daruan":
        return GroupDaruan(width, groups, o["reps"], o["preact_trainable"], o["fast"], base)
    names = list(record["candidates"])
    return Selectable([activation(record, width, None, n) for n in names], names, groups, groups, base)


def kan_layer(record: dict[str, Any], in_features: int, out_features: int, basis: str | None = None,
              residual: bool | None = None) -> nn.Module:
    """A KAN layer of the record's basis and form."""
    basis = basis or record["basis"]
    residual = record["form"] == "residual" if residual is None else residual
    o = _opts(record)
    if basis == "rational":
        return RationalKANLinear(in_features, out_features, record["groups"], residual,
                                 record.get("numerators", "shared") == "group")
    if basis == "bspline":
        return BSplineKANLinear(in_features, out_features, record["grid"], record["order"], residual)
    if basis in ("fourier", "trukan"):
        return BasisKANLinear(in_features, out_features, basis, o["terms"], o["degree"], o["knots"], o["knot_mode"])
    if basis == "daruan":
        return QKANLinear(in_features, out_features, o["reps"], o["preact_trainable"], o["fast"])
    names = list(record["candidates"])
    base = nn.Linear(in_features, out_features) if residual else None
    return Selectable([kan_layer(record, in_features, out_features, n, False) for n in names], names,
                      out_features, 0, base)


def inputs_of(record: dict[str, Any]) -> list[str]:
    """Paths of the projections that read the MLP input (gate first for gated MLPs)."""
    return [p for p in (record["gate"], record["up"]) if p]


def absorbs_activation(record: dict[str, Any]) -> bool:
    """Whether the second KAN layer's edges take over the activation (pure ``kan`` on plain/split MLPs)."""
    return record["structure"] == "kan" and record["form"] == "pure" and record["kind"] != "gated"


def build(model: nn.Module, record: dict[str, Any]) -> None:
    """Put the record's new modules into ``model`` (any device, ``meta`` included), on the originals' dtype."""
    get = model.get_submodule
    ref = next(get(record["down"]).parameters())
    place = dict(device=ref.device, dtype=ref.dtype)
    d, d_ff = record["width"], record["hidden"]
    residual = record["form"] == "residual"
    if record["structure"] == "hqkan":
        k = hqkan_width(d)
        if residual:
            core = kan_layer(record, k, k, residual=False)
            _put(model, record["down"], HQKANResidual(get(record["down"]), core, d_ff, k, d).to(**place))
            return
        for path in inputs_of(record):
            _put(model, path, nn.Linear(d, k).to(**place))
        _put(model, record["act"], kan_layer(record, k, k).to(**place))
        _put(model, record["down"], nn.Linear(k, d).to(**place))
        return
    if record["structure"] == "kat":
        for path in inputs_of(record):
            f1 = activation(record, d, nn.Identity() if residual else None)
            _put(model, path, PreActivated(f1.to(**place), get(path)))
        old_act = get(record["act"])
        _put(model, record["act"], activation(record, d_ff, old_act if residual else None).to(**place))
        return
    for path in inputs_of(record):
        _put(model, path, kan_layer(record, d, d_ff).to(**place))
    _put(model, record["down"], kan_layer(record, d_ff, d).to(**place))
    if absorbs_activation(record):
        _put(model, record["act"], nn.Identity())


def hqkan_width(d: int) -> int:
    """HQKAN's bottleneck k = ceil(log2 d)."""
    return max(1, math.ceil(math.log2(d)))


def _put(model: nn.Module, path: str, module: nn.Module) -> None:
    module.surgeon_pass = MARK
    set_submodule(model, path, module)


def mlp_forward(model: nn.Module, record: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The MLP's function from its input to ``down``'s output, read from the modules now at its paths."""
    get = model.get_submodule
    if record["kind"] == "gated":
        h = get(record["act"])(get(record["gate"])(x)) * get(record["up"])(x)
    else:
        h = get(record["act"])(get(record["up"])(x))
    return get(record["down"])(h)
