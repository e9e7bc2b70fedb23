"""``topk``: keep the k largest hidden activations of each MLP per token (lazy-neuron top-k; approx).

A site is an MLP (path as in ``swap_activation``: the MLP's scope, a BERT block for split MLPs); its down
projection is wrapped in :class:`TopKSparseLinear` with ``keep = max(1, round((1 − sparsity)·d_ff))``.
No calibration: k is fixed. The record keeps the share of calibration entries that were already zero or
below the k-th magnitude, i.e. the share of the hidden activation the top-k drops (``dropped_mass``).
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.passes.sparsity.calibrate import calibration_batches, collect_inputs
from surgeon.passes.sparsity.layers import TopKSparseLinear
from surgeon.passes.sparsity.threshold import check_share
from surgeon.patterns import linear_view, mlp_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule


@dataclass(frozen=True, kw_only=True)
class TopK(PassConfig):
    """Options of ``topk``: ``sparsity``, the share of each token's hidden activations set to zero."""

    pass_name = "topk"
    sparsity: float = 0.5

    def check(self) -> None:
        """``sparsity`` in [0, 1)."""
        check_share(self, "sparsity", self.sparsity)


def keep_count(width: int, sparsity: float) -> int:
    """How many of ``width`` hidden activations top-k keeps at ``sparsity``."""
    return max(1, min(width, round((1 - sparsity) * width)))


@register_pass(TopK)
class TopKPass(PassHandler):
    """Wraps each MLP's down projection so only the k largest hidden activations reach it."""

    preserves = "approx"
    paper = "The Lazy Neuron Phenomenon: On Emergence of Activation Sparsity in Transformers (Li et al., ICLR 2023)"
    summary = "Keep the k largest-magnitude MLP hidden activations per token, zero the rest."
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: TopK) -> Found:
        return Found([Site(s.path, s.down, data=s) for s in mlp_sites(ctx.capture)])

    def rewrite(self, ctx: PassContext, config: TopK, sites: list[Site]) -> bool:
        downs = [s.data.down for s in sites]
        xs = collect_inputs(ctx.model, downs, calibration_batches(ctx), max_rows=2048)
        for site in sites:
            down = site.data.down
            inner = ctx.model.get_submodule(down)
            width = linear_view(inner).in_features
            keep = keep_count(width, config.sparsity)
            layer = TopKSparseLinear(inner, keep)
            set_submodule(ctx.model, down, layer)
            x = xs[down].abs()
            kept = x.topk(keep, dim=-1).values.sum(-1) if x.numel() else x.sum(-1)
            dropped = float(1 - kept.sum() / x.sum()) if x.numel() and float(x.sum()) > 0 else 0.0
            site.record = {"module": down, "keep": keep, "width": width, "dropped_mass": round(dropped, 6)}
        return bool(sites)

    def replay(self, model, config, record) -> None:
        set_submodule(model, record["module"], TopKSparseLinear(model.get_submodule(record["module"]), record["keep"]))
