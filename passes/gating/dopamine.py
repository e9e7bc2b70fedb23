"""``dopamine`` and ``dopamine_harden``: per-neuron gates on MLP hidden activations (Dopamine / TauGate).

``dopamine`` (exact at initialisation): each MLP's down projection is wrapped in :class:`GatedLinear`,
whose :class:`NeuronGate` starts open: ``g = 1``, ``T_i = temperature·std(h_i)`` and
``τ_i = min(h_i) − open_margin·T_i`` over calibration tokens, so every calibration activation sits
``open_margin`` temperatures above its threshold (σ(18) rounds to 1 in fp32). With ``freeze`` every other
parameter of the model stops requiring gradients, so an optimiser over ``model.parameters()`` that
skips frozen ones trains only τ and g (2·d_ff numbers per MLP).

``dopamine_harden`` (approx): turns every gate into its 0/1 limit ``g·h·1[h > τ]`` for inference and
records, per MLP, the share of calibration activations whose neuron fires (``firing``).
The gate formula is inferred from the paper's abstract (no code was found); see docs/passes/gating.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.errors import RecipeError
from surgeon.passes.gating.layers import GatedLinear, NeuronGate
from surgeon.passes.sparsity.calibrate import calibration_batches, collect_inputs
from surgeon.patterns import linear_view, mlp_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule


@dataclass(frozen=True, kw_only=True)
class Dopamine(PassConfig):
    """Options of ``dopamine``: ``temperature`` (T in units of each neuron's calibration std),
    ``open_margin`` (how many temperatures below the smallest calibration activation τ starts) and
    ``freeze`` (stop gradients of every non-gate parameter)."""

    pass_name = "dopamine"
    temperature: float = 0.1
    open_margin: float = 18.0
    freeze: bool = True

    def check(self) -> None:
        """``temperature`` and ``open_margin`` must be positive."""
        for name in ("temperature", "open_margin"):
            if not getattr(self, name) > 0:
                raise RecipeError(f"option `{name}` of pass `dopamine` must be positive, got {getattr(self, name)}",
                                  fix=f"Set `{name}` to a positive number (defaults: temperature 0.1, open_margin 18)")


@dataclass(frozen=True, kw_only=True)
class DopamineHarden(PassConfig):
    """Options of ``dopamine_harden``: none beyond ``target`` (paths of gated down projections)."""

    pass_name = "dopamine_harden"


def gate_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every τ and g of the model's neuron gates (what a Dopamine fine-tune optimises)."""
    return [p for m in model.modules() if isinstance(m, NeuronGate) for p in (m.tau, m.gain)]


@register_pass(Dopamine)
class DopaminePass(PassHandler):
    """Inserts open per-neuron gates before each MLP's down projection; freezes the rest."""

    preserves = "exact"
    paper = "Brain Modes, Not Brains: neuron gating of frozen networks (Dopamine / TauGate, arXiv 2602.11726)"
    summary = "Gate each MLP hidden neuron with a trainable threshold and gain (identity at init)."
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: Dopamine) -> Found:
        return Found([Site(s.path, s.down, data=s) for s in mlp_sites(ctx.capture)])

    def rewrite(self, ctx: PassContext, config: Dopamine, sites: list[Site]) -> bool:
        downs = [s.data.down for s in sites]
        hs = collect_inputs(ctx.model, downs, calibration_batches(ctx), max_rows=1 << 16)
        for site in sites:
            inner = ctx.model.get_submodule(site.data.down)
            width = linear_view(inner).in_features
            ref = inner.weight
            gate = NeuronGate(width, device=ref.device, dtype=ref.dtype)
            h = hs[site.data.down].double()
            std = h.std(0).clamp_min(1e-6) if h.shape[0] > 1 else torch.ones(width, dtype=torch.float64)
            temp = config.temperature * std
            low = h.min(0).values if h.shape[0] else torch.zeros(width, dtype=torch.float64)
            with torch.no_grad():
                gate.temperature.copy_(temp)
                gate.tau.copy_(low - config.open_margin * temp)
            set_submodule(ctx.model, site.data.down, GatedLinear(inner, gate))
            site.record = {"module": site.data.down, "width": width}
        if config.freeze:
            gates = {id(p) for p in gate_parameters(ctx.model)}
            for p in ctx.model.parameters():
                p.requires_grad_(id(p) in gates)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        inner = model.get_submodule(record["module"])
        ref = inner.weight
        gate = NeuronGate(record["width"], device=ref.device, dtype=ref.dtype)
        set_submodule(model, record["module"], GatedLinear(inner, gate))


@register_pass(DopamineHarden)
class DopamineHardenPass(PassHandler):
    """Switches neuron gates to their hard 0/1 form and reports the share of neurons that fire."""

    preserves = "approx"
    paper = DopaminePass.paper
    summary = "Turn Dopamine's smooth gates into exact 0/1 masks for inference; report the firing share."
    site_kind = "gated down projection"

    def find(self, ctx: PassContext, config: DopamineHarden) -> Found:
        sites, skipped = [], []
        for path, m in ctx.model.named_modules():
            if isinstance(m, GatedLinear):
                (skipped.append((path, "already hard")) if m.gate.hard else sites.append(Site(path, path)))
        return Found(sites, skipped)

    def rewrite(self, ctx: PassContext, config: DopamineHarden, sites: list[Site]) -> bool:
        paths = [s.path for s in sites]
        hs = collect_inputs(ctx.model, paths, calibration_batches(ctx), max_rows=1 << 16)
        for site in sites:
            gate = ctx.model.get_submodule(site.path).gate
            gate.hard = True
            h = hs[site.path]
            firing = float((h.to(gate.tau.device) > gate.tau.detach().float()).float().mean()) if h.numel() else 0.0
            site.record = {"module": site.path, "firing": round(firing, 6)}
        return bool(sites)

    def replay(self, model, config, record) -> None:
        model.get_submodule(record["module"]).gate.hard = True
