"""``pack_quant``: store the int-quantised weights of QuantLinears as packed codes plus steps (exact).

A site is a :class:`~.layers.QuantLinear` whose weight quantizer is an int grid (any bits, granularity
and mode except fp8/POST, which have no integer grid here). It becomes a :class:`~.layers.PackedLinear`
holding codes (b bits each, packed into bytes when b divides 8), one fp32 step and one int16 zero per
row/group, and the same input/output quantizers. W4 g128: 4 + 48/128 = 4.375 bits per weight. The
dequantised weight equals the fake-quantised one bit for bit, so the pass is ``exact``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.passes.quant.layers import PackedLinear, QuantLinear
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule


@dataclass(frozen=True, kw_only=True)
class PackQuant(PassConfig):
    """Options of ``pack_quant``: none beyond ``target`` (QuantLinear paths) and ``expect``."""

    pass_name = "pack_quant"


def _spec_text(q) -> str:
    return "none" if q is None else q.spec.text()


@torch.no_grad()
def pack_linear(model, path: str) -> dict:
    """Replace the QuantLinear at ``path`` by a PackedLinear; returns the replay record."""
    old: QuantLinear = model.get_submodule(path)
    wq = old.weight_quant
    step, zero = wq.grid(old.weight)
    codes = torch.clamp(torch.round(wq.rows(old.weight) * (1.0 / step)) + zero, wq.qmin, wq.qmax)
    new = PackedLinear(old.in_features, old.out_features, old.bias is not None, bits=wq.spec.bits,
                       rows=step.shape[0], input=_spec_text(old.input_quant), output=_spec_text(old.output_quant),
                       device=old.weight.device, dtype=old.weight.dtype)
    new.store(codes - wq.qmin, step, zero - wq.qmin)
    if old.bias is not None:
        new.bias.copy_(old.bias)
    for name in ("input_quant", "output_quant"):
        if getattr(old, name) is not None:
            getattr(new, name).load_state_dict(getattr(old, name).state_dict())
    set_submodule(model, path, new)
    return {"path": path, "in": new.in_features, "out": new.out_features, "bias": old.bias is not None,
            "bits": new.bits, "rows": new.rows, "input": _spec_text(old.input_quant),
            "output": _spec_text(old.output_quant)}


@register_pass(PackQuant)
class PackQuantPass(PassHandler):
    """Stores quantised Linear weights as packed integers plus steps and zero points."""

    preserves = "exact"
    paper = "(storage format; W4 g128 as in OmniQuant/AWQ deployments)"
    summary = "Store int fake-quantised Linear weights as packed codes + per-group step/zero (exact)."
    site_kind = "QuantLinear"

    def find(self, ctx: PassContext, config: PackQuant) -> Found:
        sites, skipped = [], []
        for path, m in ctx.model.named_modules():
            if not isinstance(m, QuantLinear):
                continue
            wq = m.weight_quant
            if wq is None:
                skipped.append((path, "no weight quantizer"))
            elif wq.spec.fmt != "int":
                skipped.append((path, f"weight format {wq.spec.fmt} has no integer grid to pack"))
            else:
                sites.append(Site(path, path))
        return Found(sites, skipped)

    def rewrite(self, ctx: PassContext, config: PackQuant, sites: list[Site]) -> bool:
        for site in sites:
            site.record = pack_linear(ctx.model, site.path)
        return bool(sites)

    def replay(self, model, config, record: dict) -> None:
        old = model.get_submodule(record["path"])
        ref = next(old.parameters())
        new = PackedLinear(record["in"], record["out"], record["bias"], bits=record["bits"], rows=record["rows"],
                           input=record["input"], output=record["output"], device=ref.device, dtype=ref.dtype)
        set_submodule(model, record["path"], new)
