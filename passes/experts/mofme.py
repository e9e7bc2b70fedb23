"""``mofme``: feature-modulation experts sharing the dense MLP (MoFME, Zhang et al., AAAI 2024).

A site is an MLP (as for ``moefy``). Its input is modulated by E FiLM experts mixed by a top-k softmax
router, and the dense MLP — shared by every expert — runs once on the mixture (see
:class:`FeatureModulated`). The paper's block is a GEGLU base → FM experts → an MLP "adaptor"; a dense
checkpoint has no base to keep, so the conversion drops it and the existing MLP takes the adaptor's
role. Experts start as the identity, so the converted model equals the dense one (``exact``) until the
experts and router are trained. Gated MLPs are wrapped whole; plain and BERT-style MLPs by their first
Linear, which gives the same function and keeps the surrounding code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surgeon.errors import RecipeError
from surgeon.passes.experts.layers import FeatureModulated
from surgeon.passes.experts.sites import ffn_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule


@dataclass(frozen=True, kw_only=True)
class Mofme(PassConfig):
    """Options of ``mofme``: ``num_experts`` FiLM experts, ``top_k`` mixed per token,
    ``uncertainty_samples`` (S > 0: Monte-Carlo router dropout with S samples in training),
    ``router_dropout`` (its rate), ``seed`` (router initialisation)."""

    pass_name = "mofme"
    num_experts: int = 4
    top_k: int = 2
    uncertainty_samples: int = 0
    router_dropout: float = 0.1
    seed: int = 0

    def check(self) -> None:
        """1 ≤ k ≤ E, S ≥ 0, 0 ≤ dropout < 1."""
        if self.num_experts < 1:
            raise RecipeError(f"option `num_experts` of pass `mofme` must be ≥ 1, got {self.num_experts}",
                              fix="Set `num_experts` to a positive integer")
        if not 1 <= self.top_k <= self.num_experts:
            raise RecipeError(f"option `top_k` of pass `mofme` must be between 1 and num_experts="
                              f"{self.num_experts}, got {self.top_k}", fix="Lower `top_k` or raise `num_experts`")
        if self.uncertainty_samples < 0:
            raise RecipeError(f"option `uncertainty_samples` of pass `mofme` must be ≥ 0, got "
                              f"{self.uncertainty_samples}", fix="Use 0 (off) or a sample count such as 5")
        if not 0 <= self.router_dropout < 1:
            raise RecipeError(f"option `router_dropout` of pass `mofme` must be in [0, 1), got "
                              f"{self.router_dropout}", fix="Use a rate such as 0.1")


@register_pass(Mofme)
class MofmePass(PassHandler):
    """Wraps dense MLPs in identity-initialised feature-modulation experts."""

    preserves = "exact"
    paper = "MoFME: Efficient Deweather Mixture-of-Experts with Uncertainty-aware Feature-wise Linear Modulation (AAAI 2024)"
    summary = "Route the MLP input through E FiLM experts (identity at start) that share the dense MLP."
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: Mofme) -> Found:
        sites, skipped = ffn_sites(ctx.capture)
        return Found([Site(s.mlp.path, s.mlp.path, data=s) for s in sites], skipped)

    def rewrite(self, ctx: PassContext, config: Mofme, sites: list[Site]) -> bool:
        gen = torch.Generator().manual_seed(config.seed)
        for site in sites:
            s = site.data
            record = {"wrap": s.mlp.path if s.placement == "module" else s.mlp.up, "d_model": s.d_model,
                      "num_experts": config.num_experts, "top_k": config.top_k,
                      "uncertainty_samples": config.uncertainty_samples, "router_dropout": config.router_dropout}
            block = build(ctx.model, record)
            block.reset_identity(gen)
            set_submodule(ctx.model, record["wrap"], block)
            site.record = record
        return bool(sites)

    def replay(self, model, config, record) -> None:
        set_submodule(model, record["wrap"], build(model, record))


def build(model: nn.Module, record: dict) -> FeatureModulated:
    """A :class:`FeatureModulated` around the module at ``record['wrap']`` (its device and dtype)."""
    inner = model.get_submodule(record["wrap"])
    param = next(inner.parameters())
    block = FeatureModulated(inner, record["d_model"], record["num_experts"], record["top_k"],
                             uncertainty_samples=record["uncertainty_samples"],
                             router_dropout=record["router_dropout"], device=param.device, dtype=param.dtype)
    block.surgeon_pass = "mofme"
    return block
