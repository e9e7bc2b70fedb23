"""``fold_norm``: fold a norm's gain and bias into the Linear layers that read it (exact).

For a norm y = γ ⊙ n(x) + β read only by Linear-like modules (W, b):
W·y + b = (W·diag(γ))·n(x) + (W·β + b), so each reader takes W' = W·diag(γ), b' = b + W·β and the norm
becomes :class:`WeightlessNorm`. γ and β are measured from the module (so ``1 + w`` scales fold too).
Norms whose output also reaches anything else (a residual add, the block output, the model output) keep
their values; the step reports why. A reader whose weight is tied to another module (an output head
sharing the embedding) is untied first, so the embedding keeps its values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.passes.norm.layers import WeightlessNorm
from surgeon.patterns import linear_view, norm_info, norm_sites
from surgeon.patterns.structure import forget
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule, tie_groups, untie


@dataclass(frozen=True, kw_only=True)
class FoldNorm(PassConfig):
    """Options of ``fold_norm``: none beyond ``target`` (norm module paths) and ``expect``."""

    pass_name = "fold_norm"


@register_pass(FoldNorm)
class FoldNormPass(PassHandler):
    """Folds norm affine parameters into the Linear layers that read the norm."""

    preserves = "exact"
    paper = "QuaRot (Ashkboos et al., 2024), §'fusing norms'; SliceGPT (Ashkboos et al., 2024)"
    summary = "Fold a norm's gain/bias into the Linears reading it, leaving a weightless norm."
    site_kind = "norm"

    def find(self, ctx: PassContext, config: FoldNorm) -> Found:
        sites, skipped = norm_sites(ctx.capture)
        return Found([Site(s.path, s.scope, data=s) for s in sites], skipped)

    def rewrite(self, ctx: PassContext, config: FoldNorm, sites: list[Site]) -> bool:
        groups = tie_groups(ctx.model)
        for site in sites:
            site.record = fold_one(ctx.model, site.data.path, site.data.readers, groups)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        replay_fold(model, record)


def fold_one(model, norm_path: str, readers: tuple[str, ...], groups: dict | None = None) -> dict:
    """Fold the norm at ``norm_path`` into ``readers``; returns the record needed to replay the structure."""
    norm = model.get_submodule(norm_path)
    info = norm_info(norm)
    gain, bias = info.gain, info.bias
    untied, biased = [], []
    for path in readers:
        if untie(model, path, groups=groups):
            untied.append(path)
        view = linear_view(model.get_submodule(path))
        w = view.weight().detach().double()
        old_bias = view.bias()
        new_bias = w @ bias.to(w.device)
        if old_bias is not None:
            new_bias = new_bias + old_bias.detach().double()
        view.set_weight(w * gain.to(w.device)[None, :])
        if old_bias is not None or bool(torch.any(bias != 0)):
            if old_bias is None:
                biased.append(path)
            view.set_bias(new_bias)
    dtype = next(norm.parameters()).dtype
    device = next(norm.parameters()).device
    set_submodule(model, norm_path, WeightlessNorm(info.kind, info.eps, info.width).to(device, dtype))
    forget(norm)
    return {"norm": norm_path, "kind": info.kind, "eps": info.eps, "width": info.width,
            "readers": list(readers), "untied": untied, "bias_added": biased}


def replay_fold(model, record: dict) -> None:
    """Rebuild the structure of one fold (weightless norm, untied and added parameters) without data."""
    for path in record["untied"]:
        untie(model, path)
    for path in record["bias_added"]:
        view = linear_view(model.get_submodule(path))
        view.set_bias(torch.zeros(view.out_features, device=view.weight().device))
    old = model.get_submodule(record["norm"])
    param = next(old.parameters(), None)
    new = WeightlessNorm(record["kind"], record["eps"], record["width"])
    if param is not None:
        new = new.to(param.device, param.dtype)
    set_submodule(model, record["norm"], new)
