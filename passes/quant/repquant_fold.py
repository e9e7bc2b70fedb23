"""``repquant_fold``: RepQuant's LayerNorm-output re-parameterisation as a pass (after ``fake_quant``).

Sites: every LayerNorm whose output only Linears read (pre-norm blocks: ``ln_1 → c_attn``,
``self_attn_layer_norm → q/k/v_proj``, ``final_layer_norm → fc1``), where every reader is a
:class:`~.layers.QuantLinear` whose input quantizer is an int, asymmetric, static per-channel quantizer
(``int<b>-asym-channel[-lwc]``: its per-channel lower/upper clips are RepQuant's dual clipping; train them
with ``calibrate_quant``). Each site's per-channel quantizer is folded by
:func:`~.repquant.fold_dual_clip` into the LayerNorm's γ, β and the readers' W, b, and every reader gets
the resulting per-tensor quantizer (``int<b>-asym-tensor-lsq`` holding Δ̃, z̃). Without weight quantizers
the readers' outputs are unchanged up to rounding ties; a weight quantizer re-grids the folded weight
W·diag(r), as in RepQ-ViT where the weights are quantised after the re-parameterisation.

Skipped, with a reason: norms whose output also feeds the residual or the block output (post-norm models
such as BERT/MiniLM), RMSNorms (no bias to absorb the per-channel zero-point shift), readers that are not
QuantLinears (an excluded head) or whose input quantizer is not int asym per-channel rtn/lwc.
Readers of one norm whose quantizers differ (``calibrate_quant`` trains each reader's copy on its own)
are merged first: the union of the observed ranges and the mean of the LWC logits (noted in the report).

Finding sites: after ``fake_quant`` the capture traces into the QuantLinears (their input quantizer, not
a Linear, reads the norm), so the pass captures a shadow of the model in which each QuantLinear is a plain
``nn.Linear`` sharing its parameters, and uses ``surgeon.patterns.norm_sites`` on that.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from surgeon.capture import capture
from surgeon.passes.quant.layers import QuantLinear
from surgeon.passes.quant.quantizers import Quantizer
from surgeon.passes.quant.repquant import fold_dual_clip
from surgeon.patterns import norm_info, norm_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule


@dataclass(frozen=True, kw_only=True)
class RepQuantFold(PassConfig):
    """Options of ``repquant_fold``: none beyond ``target`` (LayerNorm paths) and ``expect``."""

    pass_name = "repquant_fold"


@contextmanager
def plain_linears(model: nn.Module):
    """Temporarily replace every QuantLinear by an ``nn.Linear`` sharing its weight and bias."""
    swapped = []
    for path, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            plain = nn.Linear(1, 1, bias=False, device="meta")
            plain.in_features, plain.out_features = module.in_features, module.out_features
            plain.weight, plain.bias = module.weight, module.bias
            set_submodule(model, path, plain)
            swapped.append((path, module))
    try:
        yield
    finally:
        for path, module in swapped:
            set_submodule(model, path, module)


def _foldable(quant: Quantizer | None) -> str | None:
    """Why ``quant`` cannot be folded (None when it can)."""
    if quant is None:
        return "has no input quantizer"
    s = quant.spec
    if s.fmt != "int" or s.symmetric or s.granularity != "channel" or s.mode not in ("rtn", "lwc"):
        return f"has input quantizer {s.text()}, not int asym per-channel rtn/lwc"
    return None


def site_problem(model: nn.Module, norm_path: str, readers: tuple[str, ...]) -> str | None:
    """Why the LayerNorm at ``norm_path`` read by ``readers`` cannot be folded (None when it can)."""
    norm = model.get_submodule(norm_path)
    info = norm_info(norm)
    if info is None or info.kind != "layer":
        return ("an RMSNorm has no bias to absorb the per-channel zero-point shift (β ← β/r − b); "
                "the per-channel quantizer stays")
    if not isinstance(getattr(norm, "bias", None), nn.Parameter) or not isinstance(norm.weight, nn.Parameter):
        return "the LayerNorm has no affine weight and bias parameters to fold into"
    for path in readers:
        reader = model.get_submodule(path)
        if not isinstance(reader, QuantLinear):
            return f"reader {path} is not quantised (not a QuantLinear)"
        why = _foldable(reader.input_quant)
        if why:
            return f"reader {path} {why}"
        if reader.weight_quant is not None and reader.weight_quant.spec.mode == "lsq":
            return f"reader {path} has an lsq weight quantizer, whose fixed steps would not fit the folded weight"
    specs = {model.get_submodule(p).input_quant.spec.text() for p in readers}
    if len(specs) > 1:
        return f"its readers' input quantizers differ in spec ({sorted(specs)})"
    return None


@torch.no_grad()
def merged_quantizer(quants: list[Quantizer]) -> tuple[Quantizer, bool]:
    """One per-channel quantizer for all readers: union of ranges, mean LWC logits; and whether they differed."""
    first = quants[0]
    same = all(torch.equal(a, b) for q in quants[1:]
               for a, b in zip(list(first.buffers()) + list(first.parameters()),
                               list(q.buffers()) + list(q.parameters())))
    if same:
        return first, False
    merged = copy.deepcopy(first)
    merged.lo.copy_(torch.stack([q.lo for q in quants]).amin(0))
    merged.hi.copy_(torch.stack([q.hi for q in quants]).amax(0))
    if merged.spec.mode == "lwc":
        merged.lower.copy_(torch.stack([q.lower for q in quants]).mean(0))
        merged.upper.copy_(torch.stack([q.upper for q in quants]).mean(0))
    else:
        merged.clip.copy_(torch.stack([q.clip for q in quants]).mean(0))
    return merged, True


def fold_site(model: nn.Module, norm_path: str, readers: tuple[str, ...]) -> tuple[dict, bool]:
    """Fold one site in place; returns its replay record and whether readers' quantizers were merged."""
    linears = [model.get_submodule(p) for p in readers]
    quant, merged = merged_quantizer([lin.input_quant for lin in linears])
    bias_added = [p for p, lin in zip(readers, linears) if lin.bias is None]
    per_tensor = fold_dual_clip(model.get_submodule(norm_path), linears, quant)
    for lin in linears:
        lin.input_quant = copy.deepcopy(per_tensor)
    return {"norm": norm_path, "readers": list(readers), "bits": quant.spec.bits, "bias_added": bias_added}, merged


def replay_site(model: nn.Module, record: dict) -> None:
    """Rebuild one fold's structure on a (meta) model: per-tensor input quantizers, added biases."""
    for path in record["readers"]:
        lin = model.get_submodule(path)
        ref = lin.weight
        if path in record["bias_added"]:
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, device=ref.device, dtype=ref.dtype))
        lin.input_quant = Quantizer(f"int{record['bits']}-asym-tensor-lsq", "input", (lin.in_features,)).to(ref.device)


@register_pass(RepQuantFold)
class RepQuantFoldPass(PassHandler):
    """Folds per-channel LayerNorm-output quantizers into the norm and its readers (per-tensor after)."""

    preserves = "approx"
    paper = "RepQuant (Li et al., 2024) / RepQ-ViT (Li et al., ICCV 2023), scale reparameterisation"
    summary = "Re-parameterise per-channel (dual-clipped) LayerNorm-output quantizers to per-tensor ones."
    site_kind = "LayerNorm read only by QuantLinears"

    def find(self, ctx: PassContext, config: RepQuantFold) -> Found:
        model = ctx.model
        with plain_linears(model):
            cap = capture(model, verify=False)
            found, skipped = norm_sites(cap)
        sites = []
        for s in found:
            problem = site_problem(model, s.path, s.readers)
            if problem:
                skipped.append((s.path, problem))
            else:
                sites.append(Site(s.path, s.scope, data={"readers": s.readers}))
        return Found(sites, skipped)

    def rewrite(self, ctx: PassContext, config: RepQuantFold, sites: list[Site]) -> bool:
        for site in sites:
            site.record, merged = fold_site(ctx.model, site.path, tuple(site.data["readers"]))
            if merged:
                ctx.notes.append(f"{site.path}: readers' per-channel quantizers differed (trained separately); "
                                 "merged as the union of ranges and the mean LWC logits before folding")
        return bool(sites)

    def replay(self, model, config, record) -> None:
        replay_site(model, record)
