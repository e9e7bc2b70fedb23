"""``mohd``: shared plus routed sub-dimensions of a dense FFN's hidden layer (MoHD, Chen et al., ICML 2025).

A site is an MLP (as for ``moefy``). Its d_ff hidden units are split into ``num_groups`` groups: the
``num_shared`` *shared* groups hold the units most often among a token's most active ones on calibration
tokens (the paper's "shared sub-dimensions with sustained activation"), and always run; the other units
are grouped (balanced k-means of first-layer rows, or in order) into routed groups, of which a router
fitted on calibration data (as ``moefy``'s linear router) runs ``top_k`` per token. Activation scaling
multiplies the routed part by a scalar, and group fusion adds, for every routed group that did not run,
its mean contribution when not chosen (see :class:`MohdFFN` and docs/passes/experts.md for the equations
followed and the choices made for a post-hoc conversion). With ``top_k = num_groups − num_shared`` the
block is the dense FFN; the pass checks that on the calibration inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import surgeon
from surgeon.errors import CertificationError, RecipeError
from surgeon.passes.experts.cluster import balanced_kmeans
from surgeon.passes.experts.layers import MohdFFN
from surgeon.passes.experts.moefy import fill, fit_router, install
from surgeon.passes.experts.sites import FfnSite, divisible_sites, dense_reference, ffn_inputs, hidden_activations
from surgeon.patterns import linear_view
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass

EXACT_RTOL = 1e-5
FIT_ROWS = 2048  # calibration tokens used to fit the scaling and fusion terms


@dataclass(frozen=True, kw_only=True)
class Mohd(PassConfig):
    """Options of ``mohd``.

    ``num_groups`` (G) equal groups of the FFN's hidden units, ``num_shared`` (S) of them always active,
    ``top_k`` routed groups run per token (k = G − S is the dense FFN); ``hot_fraction``: a unit is
    "highly activated" for a token when its |h| is in the token's top ``hot_fraction`` of units (shared
    groups take the units that are so most often); ``grouping`` of the routed units: ``kmeans``
    (balanced k-means of first-layer rows) or ``contiguous`` (original order); ``scaling`` of the routed
    part: ``fitted`` (least-squares scalar on calibration), ``ratio`` ((G − S)/k) or ``none``; ``fusion``:
    ``mean`` (unchosen groups add their mean contribution) or ``none``; ``ridge`` (router fit), ``seed``,
    ``kmeans_iters``, ``dispatch`` (``gather`` or ``masked``, as for ``moefy``).
    """

    pass_name = "mohd"
    num_groups: int = 16
    num_shared: int = 2
    top_k: int = 6
    hot_fraction: float = 0.1
    grouping: Literal["kmeans", "contiguous"] = "kmeans"
    scaling: Literal["fitted", "ratio", "none"] = "fitted"
    fusion: Literal["mean", "none"] = "mean"
    ridge: float = 1e-3
    seed: int = 0
    kmeans_iters: int = 20
    dispatch: Literal["gather", "masked"] = "gather"

    def check(self) -> None:
        """G ≥ 2, 0 ≤ S < G, 1 ≤ k ≤ G − S, 0 < hot_fraction ≤ 1, ridge ≥ 0, kmeans_iters ≥ 1."""
        def bad(name, why, fix):
            raise RecipeError(f"option `{name}` of pass `mohd` {why}, got {getattr(self, name)}", fix=fix)
        if self.num_groups < 2:
            bad("num_groups", "must be ≥ 2", "Use a divisor of the FFN width such as 8 or 16")
        if not 0 <= self.num_shared < self.num_groups:
            bad("num_shared", f"must be between 0 and num_groups − 1 = {self.num_groups - 1}", "Lower `num_shared`")
        if not 1 <= self.top_k <= self.num_groups - self.num_shared:
            bad("top_k", f"must be between 1 and num_groups − num_shared = {self.num_groups - self.num_shared}",
                "Lower `top_k` or `num_shared`")
        if not 0 < self.hot_fraction <= 1:
            bad("hot_fraction", "must be in (0, 1]", "Use a fraction such as 0.1")
        if self.ridge < 0:
            bad("ridge", "must be ≥ 0", "Set `ridge` to 0 or a small positive number")
        if self.kmeans_iters < 1:
            bad("kmeans_iters", "must be ≥ 1", "Set `kmeans_iters` to a positive integer")


@register_pass(Mohd)
class MohdPass(PassHandler):
    """Converts dense FFNs into shared + top-k routed hidden sub-dimension groups.

    Declares ``approx``: exact only when every routed group runs, which the pass itself checks.
    """

    preserves = "approx"
    paper = "MoHD: Mixture of Hidden-Dimensions Transformer (Chen et al., ICML 2025, arXiv 2412.05644)"
    summary = "Split an FFN's hidden units into shared groups and top-k routed groups with scaling and fusion."
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: Mohd) -> Found:
        return divisible_sites(ctx.capture, config.num_groups, "num_groups")

    def rewrite(self, ctx: PassContext, config: Mohd, sites: list[Site]) -> bool:
        batches = ctx.calibration or [surgeon.example_inputs(ctx.model)]
        inputs = ffn_inputs(ctx.model, [s.data for s in sites], batches)
        for site in sites:
            site.record, note = mohd_one(ctx.model, site.data, inputs[site.path], config)
            ctx.notes.append(f"{site.path}: {note}")
        return bool(sites)

    def replay(self, model, config, record) -> None:
        install(model, record, build_empty(model, record))


def select_shared(h: torch.Tensor, count: int, hot_fraction: float) -> torch.Tensor:
    """The ``count`` units of ``h`` (tokens, n) most often in a token's top ``hot_fraction`` by |h|.

    Ties in that frequency are broken by mean |h|. Returns sorted unit indices (count,).
    """
    a = h.abs().double()
    top = max(1, round(hot_fraction * a.shape[1]))
    thresh = a.topk(top, dim=1).values[:, -1:]
    freq = (a >= thresh).double().mean(0)
    key = freq + 1e-9 * a.mean(0) / a.mean(0).max().clamp_min(1e-30)
    return key.topk(count).indices.sort().values


def choose_groups(h: torch.Tensor, first: torch.Tensor, config: Mohd) -> torch.Tensor:
    """Unit indices of each group (G, m): shared groups first (by :func:`select_shared`), then routed."""
    n, g = h.shape[1], config.num_groups
    m = n // g
    shared = select_shared(h, config.num_shared * m, config.hot_fraction)
    mask = torch.ones(n, dtype=torch.bool)
    mask[shared] = False
    rest = torch.arange(n)[mask]
    if config.grouping == "kmeans" and g - config.num_shared > 1:
        local = balanced_kmeans(first[rest], g - config.num_shared, iters=config.kmeans_iters, seed=config.seed)
        routed = rest[local]
    else:
        routed = rest.view(g - config.num_shared, m)
    return torch.cat([shared.view(config.num_shared, m), routed])


def mohd_one(model: nn.Module, site: FfnSite, x: torch.Tensor, config: Mohd) -> tuple[dict, str]:
    """Convert one FFN given its calibration inputs ``x`` (tokens, d); returns the record and a note."""
    mlp = site.mlp
    with torch.no_grad():
        h = hidden_activations(model, site, x).double()
        first = linear_view(model.get_submodule(mlp.gate if mlp.kind == "gated" else mlp.up)).weight()
        groups = choose_groups(h.cpu(), first.detach().double().cpu(), config)
        routed = groups[config.num_shared:]
        r_weight, r_bias = fit_router(x.double().cpu(), h.abs().cpu()[:, routed].sum(-1), config.ridge)
        record = structure_record(model, site, config)
        block = build_empty(model, record)
        fill(model, site, block, groups, r_weight, r_bias)
        block.scale.fill_(1.0)
        if block.fusion_mean is not None:
            block.fusion_mean.zero_()
        note = fit_compensation(block, dense_reference(model, site), x[:FIT_ROWS], config)
        if config.top_k == config.num_groups - config.num_shared:
            _check_exact(dense_reference(model, site), block, x, mlp.path)
    install(model, record, block)
    return record, note


def fit_compensation(block: MohdFFN, dense, x: torch.Tensor, config: Mohd) -> str:
    """Set ``block.fusion_mean`` and ``block.scale`` from calibration rows ``x``; returns a report note.

    fusion_mean[g] = mean of c_g over the tokens that do not choose g (0 if every token does); then the
    scale is 1 (``none``, or every routed group runs), (G − S)/k (``ratio``), or the least-squares
    scalar α minimising ‖dense(x) − shared − α·routed − fusion − b_out‖² (``fitted``).
    """
    contrib = block.routed_contributions(x).double()  # (T, G−S, d)
    keep = block.chosen_mask(block.route(x), x).double()  # (T, G−S)
    drop = 1.0 - keep
    if block.fusion_mean is not None:
        count = drop.sum(0).clamp_min(1.0)
        block.fusion_mean.copy_(torch.einsum("tg,tgd->gd", drop, contrib) / count[:, None])
    if config.top_k == block.num_routed or config.scaling == "none":
        alpha = 1.0
    elif config.scaling == "ratio":
        alpha = block.num_routed / config.top_k
    else:
        routed = torch.einsum("tg,tgd->td", keep, contrib)
        rest = dense(x).double() - block.shared_output(x).double()
        if block.fusion_mean is not None:
            rest = rest - drop @ block.fusion_mean.double()
        if block.b_out is not None:
            rest = rest - block.b_out.double()
        alpha = float((rest * routed).sum() / (routed * routed).sum().clamp_min(1e-30))
    block.scale.fill_(alpha)
    return f"scale={alpha:.4f}, groups {block.num_shared} shared + {config.top_k}/{block.num_routed} routed"


def structure_record(model: nn.Module, site: FfnSite, config: Mohd) -> dict:
    """Everything needed to rebuild the converted FFN's structure without data."""
    mlp = site.mlp
    up, down = linear_view(model.get_submodule(mlp.up)), linear_view(model.get_submodule(mlp.down))
    gate = linear_view(model.get_submodule(mlp.gate)) if mlp.gate else None
    return {"placement": site.placement, "path": mlp.path, "up": mlp.up, "act": mlp.act, "down": mlp.down,
            "gate": mlp.gate, "d_model": site.d_model, "d_ff": site.d_ff, "num_groups": config.num_groups,
            "num_shared": config.num_shared, "top_k": config.top_k, "fusion": config.fusion == "mean",
            "dispatch": config.dispatch, "bias_in": up.bias() is not None, "bias_out": down.bias() is not None,
            "bias_gate": gate is not None and gate.bias() is not None}


def build_empty(model: nn.Module, record: dict) -> MohdFFN:
    """An uninitialised :class:`MohdFFN` for ``record``, on the device/dtype of the FFN it replaces."""
    w = next(model.get_submodule(record["up"]).parameters())
    block = MohdFFN(record["d_model"], record["d_ff"], record["num_groups"], record["num_shared"], record["top_k"],
                    copy.deepcopy(model.get_submodule(record["act"])), gated=record["gate"] is not None,
                    bias_in=record["bias_in"], bias_gate=record["bias_gate"], bias_out=record["bias_out"],
                    fusion=record["fusion"], dispatch=record["dispatch"], device=w.device, dtype=w.dtype)
    block.surgeon_pass = "mohd"
    return block


def _check_exact(dense, block: MohdFFN, x: torch.Tensor, path: str) -> None:
    sample = x[:512]
    ref, out = dense(sample).double(), block(sample).double()
    err = float((ref - out).norm() / ref.norm().clamp_min(1e-30))
    if not err <= EXACT_RTOL:
        raise CertificationError(f"mohd with every routed group active changed {path} by relative error {err:.2e}",
                                 where=path, fix="This is a bug in mohd; report the model and recipe")
