"""``teal``, ``wina`` and ``rsparse``: calibrated magnitude masks on the inputs of Linear layers (approx).

All three zero input channel j of a Linear when its score ``|x_j| · c_j`` is at or below a threshold set
on calibration tokens so that a target share of the scores lies below it:
- ``teal`` (TEAL, Liu et al. 2024): ``c_j = 1``;
- ``wina`` (WINA, Chen et al. 2025): ``c_j = ‖W_{:,j}‖₂``; the authors' code uses column norms only for the
  MLP gate projection and the attention key projection (``column_norms: code``); ``all`` uses them for
  every Linear as the paper's criterion states;
- ``rsparse`` (R-Sparse, Zhang et al. 2025): ``c_j = ‖W_{:,j}‖₂`` and the masked channels go through a
  rank-r approximation of W from its SVD. With budget share α of the layer's dense cost ``(1 − s)``:
  mask sparsity ``1 − (1 − s)·α``, rank ``r = ⌊(in·out·(1 − s) − ⌊in·(1 − s)·α⌋·out) / (in + out)⌋``.
Sites are Linear layers inside the model's blocks (attention and MLP projections); a site's path is the
Linear's path. Each record keeps the share of calibration entries masked (``achieved_sparsity``).
Left out: TEAL's greedy per-matrix allocation and R-Sparse's evolutionary (α, s) search; every matrix gets
the same target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from surgeon.errors import RecipeError
from surgeon.passes.sparsity.calibrate import block_linears, calibration_batches, collect_inputs, quantile
from surgeon.passes.sparsity.layers import ThresholdSparseLinear, TopKSparseLinear
from surgeon.patterns import linear_view, mlp_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule

WRAPPERS = (ThresholdSparseLinear, TopKSparseLinear)
KEY_NAMES = {"k_proj", "key", "wk", "k_lin"}  # attention key projections by their usual names


def check_share(config: PassConfig, name: str, value: float, *, low_open: bool = False) -> None:
    """``value`` must lie in [0, 1) (or (0, 1] when ``low_open``); else a RecipeError naming ``name``."""
    ok = (0 < value <= 1) if low_open else (0 <= value < 1)
    if not ok:
        bounds = "(0, 1]" if low_open else "[0, 1)"
        raise RecipeError(f"option `{name}` of pass `{config.pass_name}` must lie in {bounds}, got {value}",
                          fix=f"Set `{name}` to a share such as 0.5")


@dataclass(frozen=True, kw_only=True)
class Teal(PassConfig):
    """Options of ``teal``: ``sparsity`` (share of input entries zeroed per Linear) and ``max_tokens``
    (calibration rows kept per Linear to set its threshold)."""

    pass_name = "teal"
    sparsity: float = 0.5
    max_tokens: int = 4096

    def check(self) -> None:
        """``sparsity`` in [0, 1); ``max_tokens`` positive."""
        check_share(self, "sparsity", self.sparsity)
        if self.max_tokens < 1:
            raise RecipeError(f"option `max_tokens` of pass `{self.pass_name}` must be positive, got {self.max_tokens}",
                              fix="Set `max_tokens` to a few thousand")


@dataclass(frozen=True, kw_only=True)
class Wina(Teal):
    """Options of ``wina``: those of ``teal`` plus ``column_norms`` (``code``: gate and key projections
    only, as the authors' code; ``all``: every Linear)."""

    pass_name = "wina"
    column_norms: Literal["code", "all"] = "code"


@dataclass(frozen=True, kw_only=True)
class RSparse(Teal):
    """Options of ``rsparse``: ``sparsity`` is the layer's saved share of dense cost; ``alpha`` the share of
    the remaining budget spent on exact sparse channels (1: no low-rank branch, the code's default)."""

    pass_name = "rsparse"
    alpha: float = 0.8

    def check(self) -> None:
        """Those of ``teal``, and ``alpha`` in (0, 1]."""
        super().check()
        check_share(self, "alpha", self.alpha, low_open=True)


def rsparse_budget(in_f: int, out_f: int, sparsity: float, alpha: float) -> tuple[float, int]:
    """(mask sparsity, rank) of one R-Sparse layer for target ``sparsity`` and budget share ``alpha``."""
    kept = int(in_f * (1 - sparsity) * alpha)
    rank = int((in_f * out_f * (1 - sparsity) - kept * out_f) / (in_f + out_f))
    return 1 - kept / in_f, max(0, min(rank, in_f, out_f))


class _ThresholdPass(PassHandler):
    """Shared find/rewrite/replay of the calibrated-threshold passes; subclasses choose scale and rank."""

    preserves = "approx"
    site_kind = "Linear"

    def find(self, ctx: PassContext, config: Teal) -> Found:
        paths, skipped = block_linears(ctx, WRAPPERS)
        return Found([Site(p, p) for p in paths], skipped)

    def column_scale(self, gates: set[str], config, path: str, w: torch.Tensor) -> torch.Tensor | None:
        """Per-input-channel score weights c (None for 1); ``gates`` are the MLP gate projections."""
        return None

    def mask_share_and_rank(self, config, in_f: int, out_f: int) -> tuple[float, int]:
        """The share of input channels to mask and the low-rank branch's rank."""
        return config.sparsity, 0

    def rewrite(self, ctx: PassContext, config: Teal, sites: list[Site]) -> bool:
        xs = collect_inputs(ctx.model, [s.path for s in sites], calibration_batches(ctx), max_rows=config.max_tokens)
        gates = {s.gate for s in mlp_sites(ctx.capture) if s.gate}
        for site in sites:
            inner = ctx.model.get_submodule(site.path)
            view = linear_view(inner)
            w = view.weight().detach().double()
            out_f, in_f = w.shape
            share, rank = self.mask_share_and_rank(config, in_f, out_f)
            scale = self.column_scale(gates, config, site.path, w)
            scores = xs[site.path].double().abs() * (scale.cpu() if scale is not None else 1.0)
            threshold = quantile(scores, share)
            layer = ThresholdSparseLinear(inner, in_f, out_f, rank)
            with torch.no_grad():
                layer.threshold.fill_(threshold)
                if scale is not None:
                    layer.scale.copy_(scale)
                if rank:
                    u, s, vh = torch.linalg.svd(w, full_matrices=False)
                    layer.lowrank_u.copy_(u[:, :rank] * s[:rank])
                    layer.lowrank_v.copy_(vh[:rank])
            layer.surgeon_pass = self.name
            set_submodule(ctx.model, site.path, layer)
            achieved = float((scores <= threshold).double().mean()) if scores.numel() else 0.0
            site.record = {"module": site.path, "in": in_f, "out": out_f, "rank": rank,
                           "target_sparsity": share, "achieved_sparsity": round(achieved, 6)}
        return bool(sites)

    def replay(self, model, config, record) -> None:
        inner = model.get_submodule(record["module"])
        layer = ThresholdSparseLinear(inner, record["in"], record["out"], record["rank"])
        layer.surgeon_pass = self.name
        set_submodule(model, record["module"], layer)


@register_pass(Teal)
class TealPass(_ThresholdPass):
    """TEAL: zero input entries of small magnitude, with a calibrated threshold per Linear."""

    paper = "TEAL: Training-Free Activation Sparsity in Large Language Models (Liu et al., 2024)"
    summary = "Zero Linear-input entries below a calibrated magnitude threshold (TEAL)."


@register_pass(Wina)
class WinaPass(_ThresholdPass):
    """WINA: weight-informed masks, |x_j|·‖W_{:,j}‖₂ against a calibrated threshold."""

    paper = "WINA: Weight Informed Neuron Activation (Chen et al., 2025)"
    summary = "Zero Linear-input entries whose |x|·column norm is below a calibrated threshold (WINA)."

    def column_scale(self, gates, config: Wina, path: str, w: torch.Tensor) -> torch.Tensor | None:
        if config.column_norms == "code":
            if path not in gates and path.rpartition(".")[2] not in KEY_NAMES:
                return None
        return w.norm(dim=0)


@register_pass(RSparse)
class RSparsePass(_ThresholdPass):
    """R-Sparse: sparse input channels exact, the rest through a rank-r SVD branch."""

    paper = "R-Sparse: Rank-Aware Activation Sparsity for Efficient LLM Inference (Zhang et al., ICLR 2025)"
    summary = "Sparse Linear inputs by |x|·column norm plus a rank-r SVD branch for the masked channels."

    def column_scale(self, gates, config, path, w):
        return w.norm(dim=0)

    def mask_share_and_rank(self, config: RSparse, in_f: int, out_f: int) -> tuple[float, int]:
        return rsparse_budget(in_f, out_f, config.sparsity, config.alpha)
