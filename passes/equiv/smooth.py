"""``smooth``: SmoothQuant / OmniQuant-LET per-channel scales on each Linear input group.

s_j = max|X_j|^α / max|W_j|^(1−α) per input channel j (X: the group's input on the calibration batches,
W: every reader's column j; clamped at 1e-5), so the activation becomes X/s and the readers W·diag(s).
Placement (``placement``):
- ``fold``: only groups whose producer takes the scale offline: a norm (its gain and bias ÷ s) or a
  Linear reached per channel (its rows ÷ s, e.g. v → o and up → down, GQA-aware through the probed
  channel map); zero runtime cost, as SmoothQuant and OmniQuant do it;
- ``online``: every group, as an online division before the readers (post-norm models such as BERT,
  whose norms also feed the residual stream, can only be smoothed this way);
- ``auto`` (default): fold where possible, online elsewhere.
``shift: true`` adds OmniQuant's channel shift δ = (max X + min X)/2 (over all calibration batches, where
OmniQuant keeps an EMA): X ↦ (X − δ)/s, the readers' biases take W·δ (a bias is created where missing).
It needs a place for −δ/s: the producer's bias (a LayerNorm's β or a Linear's b) when folded, else the
online transform; groups folded into a bias-less producer (RMSNorm) or along a path that does not pass a
shift (the probe checks it: through attention Σp = 1 keeps it, act(gate)·up does not) get the scale only,
as OmniQuant disables shifts for LLaMA.
``learnable: true`` makes the scales online deltas that ``calibrate_quant`` trains (LET); after calibration
they are folded into the fixed scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from surgeon.errors import RecipeError, SurgeonError
from surgeon.passes.equiv.common import EquivPass, GroupStats, fold_into_readers, install, reader_weights
from surgeon.passes.equiv.layers import ScaleTransform, TransformedLinear
from surgeon.passes.equiv.regions import InputGroup
from surgeon.patterns import linear_view
from surgeon.patterns.structure import forget, norm_info
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import register_pass

SCALE_MIN = 1e-5


@dataclass(frozen=True, kw_only=True)
class Smooth(PassConfig):
    """Options of ``smooth``: strength ``alpha``, ``placement``, ``shift`` (OmniQuant's δ), ``learnable`` (LET),
    ``exclude``."""

    pass_name = "smooth"
    alpha: float = 0.5
    placement: Literal["auto", "fold", "online"] = "auto"
    shift: bool = False
    learnable: bool = False
    exclude: tuple[str, ...] = ("embeddings", "head")

    def check(self) -> None:
        """``alpha`` in [0, 1]; learnable scales need an online placement."""
        if not 0 <= self.alpha <= 1:
            raise RecipeError(f"option `alpha` of pass `smooth` must be in [0, 1], got {self.alpha}", fix="Use 0.5")
        if self.learnable and self.placement == "fold":
            raise RecipeError("`learnable: true` trains online scales, but `placement` is 'fold'",
                              fix="Use placement 'auto' or 'online' with learnable scales")


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s = max|X|^α / max|W|^(1−α), per channel (float64, ≥ 1e-5)."""
    s = x_absmax.clamp_min(SCALE_MIN).pow(alpha) / w_absmax.clamp_min(SCALE_MIN).pow(1 - alpha)
    return s.clamp_min(SCALE_MIN)


@register_pass(Smooth)
class SmoothPass(EquivPass):
    """Migrates activation outliers into the weights with per-channel scales (folded or online)."""

    paper = "SmoothQuant (Xiao et al., ICML 2023); OmniQuant LET (Shao et al., ICLR 2024)"
    summary = "Per-channel smoothing scales per Linear input group, folded into norms/Linears or online."

    def eligible(self, model, config: Smooth, group: InputGroup) -> str | None:
        if config.placement == "fold" and not group.foldable:
            return f"no producer takes a fold ({group.note or 'not a norm or Linear output'}); use placement online"
        return None

    def rewrite_group(self, ctx, config: Smooth, group: InputGroup, stats: GroupStats, index: int) -> dict:
        w = reader_weights(ctx.model, group.readers)
        s = smoothing_scales(stats.absmax.to(w.device), w.abs().amax(0), config.alpha)
        delta = ((stats.lo + stats.hi) / 2).to(w.device) if config.shift else None
        if group.foldable and not (config.learnable or config.placement == "online"):
            if group.producer_kind == "linear":
                s = _per_producer_channel(s, group.channel_map, "amax")
            if delta is not None and not (group.shiftable and _producer_has_bias(ctx.model, group)):
                # Nowhere to put −δ/s offline (RMSNorm, bias-less Linear), or a shift does not pass the
                # path (act(gate)·up scales it per token): scale only.
                delta = None
            if delta is not None and group.producer_kind == "linear":
                # One δ per producer channel: reader channels fed by one KV channel (GQA) see different
                # values (each query head mixes it differently), so they share the mean of their midpoints.
                delta = _per_producer_channel(delta, group.channel_map, "mean")[list(group.channel_map)]
            new_biases = shift_reader_biases(ctx.model, group.readers, delta) if delta is not None else []
            fold_scale_into_producer(ctx.model, group, s, delta)
            t = ScaleTransform(group.width, shifted=delta is not None)
            t.scale.copy_(s if group.channel_map is None else s[list(group.channel_map)])
            if delta is not None:
                t.shift.copy_(delta)
            fold_into_readers(ctx.model, group.readers, t)
            return {"readers": list(group.readers), "transform": None, "producer": group.producer,
                    "new_biases": new_biases}, t
        t = ScaleTransform(group.width, learnable=config.learnable, shifted=delta is not None)
        t.scale.copy_(s.float())
        new_biases = []
        if delta is not None:
            t.shift.copy_(delta.float())
            new_biases = shift_reader_biases(ctx.model, group.readers, t.shift.double())
        spec = {"cls": "scale", "n": group.width, "learnable": config.learnable, "shifted": delta is not None}
        return {**install(ctx.model, group, t, spec), "new_biases": new_biases}, t


def _per_producer_channel(values: torch.Tensor, cmap: tuple[int, ...], reduce: str) -> torch.Tensor:
    """One value per producer channel from the reader channels it feeds (GQA repeats a KV channel):
    ``amax`` or ``mean`` of theirs; channels no reader sees get 1."""
    index = torch.tensor(cmap, device=values.device)
    out = torch.ones(max(cmap) + 1, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, index, values, reduce=reduce, include_self=False)


def _producer(model, group: InputGroup):
    module = model.get_submodule(group.producer)
    return module.linear if isinstance(module, TransformedLinear) else module  # an earlier group wrapped it


def _producer_has_bias(model, group: InputGroup) -> bool:
    return getattr(_producer(model, group), "bias", None) is not None


@torch.no_grad()
def shift_reader_biases(model, readers: tuple[str, ...], delta: torch.Tensor) -> list[str]:
    """b ← b + W·δ for every reader (W as it is now, before smoothing); returns readers given a new bias."""
    created = []
    for r in readers:
        view = linear_view(model.get_submodule(r))
        w = view.weight().detach().double()
        old = view.bias()
        if old is None:
            created.append(r)
        view.set_bias(w @ delta.to(w) + (old.detach().double() if old is not None else 0.0))
    return created


@torch.no_grad()
def fold_scale_into_producer(model, group: InputGroup, s: torch.Tensor, delta: torch.Tensor | None = None) -> None:
    """Make the producer emit (y − δ)/s: a norm's gain and bias, or a Linear's rows and bias (``s`` and
    ``delta`` per producer channel for Linears; δ in reader channels is mapped back through the group)."""
    module = _producer(model, group)
    if group.producer_kind == "linear":
        view = linear_view(module)
        scale = torch.ones(view.out_features, dtype=torch.float64, device=s.device)
        scale[: len(s)] = s
        view.set_weight((view.weight().double() / scale[:, None]).to(view.weight().dtype))
        if view.bias() is not None:
            b = view.bias().double()
            if delta is not None:
                shift = torch.zeros_like(b)
                shift[list(group.channel_map)] = delta.to(b)  # equal for reader channels of one producer channel
                b = b - shift
            view.set_bias((b / scale).to(view.bias().dtype))
        return
    info = norm_info(module)
    offset = info.gain - module.weight.detach().double()  # 0 for x·w, 1 for Gemma's x·(1 + w)
    if (offset - offset.mean()).abs().max() > 1e-4:
        raise SurgeonError(f"cannot tell how {group.producer}'s weight sets its gain",
                           where=group.producer, fix="Use `placement: online` for this model")
    module.weight.copy_((info.gain / s - offset).to(module.weight.dtype))
    if getattr(module, "bias", None) is not None:
        bias = info.bias - (delta.to(info.bias) if delta is not None else 0.0)
        module.bias.copy_((bias / s).to(module.bias.dtype))
    forget(module)
