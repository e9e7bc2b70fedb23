"""``moefy``: split a dense FFN's neurons into experts with a top-k router (MoEfication).

A site is an MLP (``model.layers.0.mlp``; BERT-style split MLPs are sited at their block). Its d_ff
neurons are partitioned into ``num_experts`` equal groups — by balanced k-means on the ℓ2-normalised
first-layer rows (the gate's rows for gated MLPs), or by balanced bisection of the neurons' co-activation
graph on calibration tokens — and the FFN becomes an :class:`ExpertFFN` whose router picks ``top_k``
experts per token. Gated MLPs use one index set for gate, up and down rows. The router is either
fitted (ridge least squares from the FFN input to each expert's activation mass Σ|h| on calibration
tokens) or built from the clusters' centroids (score = x · mean normalised row). With ``top_k ==
num_experts`` the block equals the dense one; the pass checks that on the calibration inputs and raises
:class:`CertificationError` above 1e-5 relative error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import surgeon
from surgeon.errors import CertificationError, RecipeError
from surgeon.passes.experts.cluster import balanced_kmeans, coactivation_partition
from surgeon.passes.experts.layers import ExpertFFN
from surgeon.passes.experts.sites import FfnSite, divisible_sites, dense_reference, ffn_inputs, hidden_activations
from surgeon.patterns import linear_view
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule

EXACT_RTOL = 1e-5


@dataclass(frozen=True, kw_only=True)
class Moefy(PassConfig):
    """Options of ``moefy``.

    ``num_experts`` (E) equal neuron groups, ``top_k`` experts run per token (k = E is the dense FFN);
    ``clustering``: ``weights`` (balanced k-means of first-layer rows) or ``coactivation`` (balanced
    partition of the co-activation graph, needs calibration); ``router``: ``linear`` (fitted, needs
    calibration) or ``centroid``; ``seed``, ``kmeans_iters``, ``neighbours`` (graph edges per neuron),
    ``ridge`` (relative L2 penalty of the router fit); ``dispatch``: ``gather`` (run only the selected
    experts' gathered weights) or ``masked`` (run all experts as one GEMM and zero the others — same
    function, faster on CPU for long inputs). Without calibration, the example batch is used.
    """

    pass_name = "moefy"
    num_experts: int = 8
    top_k: int = 4
    clustering: Literal["weights", "coactivation"] = "weights"
    router: Literal["linear", "centroid"] = "linear"
    seed: int = 0
    kmeans_iters: int = 20
    neighbours: int = 16
    ridge: float = 1e-3
    dispatch: Literal["gather", "masked"] = "gather"

    def check(self) -> None:
        """E ≥ 1, 1 ≤ k ≤ E, positive iteration and neighbour counts, non-negative ridge."""
        for name in ("num_experts", "kmeans_iters", "neighbours"):
            if getattr(self, name) < 1:
                raise RecipeError(f"option `{name}` of pass `moefy` must be ≥ 1, got {getattr(self, name)}",
                                  fix=f"Set `{name}` to a positive integer")
        if not 1 <= self.top_k <= self.num_experts:
            raise RecipeError(f"option `top_k` of pass `moefy` must be between 1 and num_experts="
                              f"{self.num_experts}, got {self.top_k}", fix="Lower `top_k` or raise `num_experts`")
        if self.ridge < 0:
            raise RecipeError(f"option `ridge` of pass `moefy` must be ≥ 0, got {self.ridge}",
                              fix="Set `ridge` to 0 or a small positive number")


@register_pass(Moefy)
class MoefyPass(PassHandler):
    """Converts dense FFNs into top-k routed experts over a balanced neuron partition.

    Declares ``approx``: the guarantee depends on ``top_k`` (the registry's ``preserves`` is per pass), so
    the k = E exactness is checked by the pass itself on the calibration inputs.
    """

    preserves = "approx"
    paper = "MoEfication (Zhang et al., ACL Findings 2022); LLaMA-MoE (Zhu et al., 2024) for gated FFNs"
    summary = "Split an FFN's neurons into E balanced experts with a fitted or centroid top-k router."
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: Moefy) -> Found:
        return divisible_sites(ctx.capture, config.num_experts, "num_experts")

    def rewrite(self, ctx: PassContext, config: Moefy, sites: list[Site]) -> bool:
        batches = ctx.calibration or [surgeon.example_inputs(ctx.model)]
        inputs = ffn_inputs(ctx.model, [s.data for s in sites], batches)
        for site in sites:
            site.record = moefy_one(ctx.model, site.data, inputs[site.path], config)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        install(model, record, build_empty(model, record))


def moefy_one(model: nn.Module, site: FfnSite, x: torch.Tensor, config: Moefy) -> dict:
    """Convert one FFN, given its calibration inputs ``x`` (tokens, d); returns the replay record."""
    mlp = site.mlp
    with torch.no_grad():
        h = hidden_activations(model, site, x).double()
        first = linear_view(model.get_submodule(mlp.gate if mlp.kind == "gated" else mlp.up)).weight()
        if config.clustering == "weights":
            groups = balanced_kmeans(first, config.num_experts, iters=config.kmeans_iters, seed=config.seed)
        else:
            groups = coactivation_partition(h, config.num_experts, neighbours=config.neighbours, seed=config.seed)
        if config.router == "centroid":
            unit = torch.nn.functional.normalize(first.detach().double().cpu(), dim=1)
            r_weight, r_bias = unit[groups].mean(1), torch.zeros(config.num_experts, dtype=torch.float64)
        else:
            r_weight, r_bias = fit_router(x.double().cpu(), h.abs().cpu()[:, groups].sum(-1), config.ridge)
        record = structure_record(model, site, config)
        expert = build_empty(model, record)
        fill(model, site, expert, groups, r_weight, r_bias)
        if config.top_k == config.num_experts:
            _check_exact(dense_reference(model, site), expert, x, mlp.path)
    install(model, record, expert)
    return record


def fit_router(x: torch.Tensor, mass: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares [x, 1]·β ≈ mass (tokens, E); the penalty is ``ridge``·mean diag of xᵀx."""
    a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    gram = a.T @ a
    penalty = ridge * gram.diagonal()[:-1].mean() * torch.eye(a.shape[1], dtype=x.dtype)
    penalty[-1, -1] = 0  # never shrink the bias
    beta = torch.linalg.solve(gram + penalty, a.T @ mass)
    return beta[:-1].T.contiguous(), beta[-1].contiguous()


def structure_record(model: nn.Module, site: FfnSite, config: Moefy) -> dict:
    """Everything needed to rebuild the converted FFN's structure without data."""
    mlp = site.mlp
    up, down = linear_view(model.get_submodule(mlp.up)), linear_view(model.get_submodule(mlp.down))
    gate = linear_view(model.get_submodule(mlp.gate)) if mlp.gate else None
    return {"placement": site.placement, "path": mlp.path, "up": mlp.up, "act": mlp.act, "down": mlp.down,
            "gate": mlp.gate, "d_model": site.d_model, "d_ff": site.d_ff, "num_experts": config.num_experts,
            "top_k": config.top_k, "dispatch": config.dispatch, "bias_in": up.bias() is not None, "bias_out": down.bias() is not None,
            "bias_gate": gate is not None and gate.bias() is not None}


def build_empty(model: nn.Module, record: dict) -> ExpertFFN:
    """An uninitialised :class:`ExpertFFN` for ``record``, on the device/dtype of the FFN it replaces."""
    w = next(model.get_submodule(record["up"]).parameters())  # linear_view cannot inspect meta modules
    expert = ExpertFFN(record["d_model"], record["d_ff"], record["num_experts"], record["top_k"],
                       copy.deepcopy(model.get_submodule(record["act"])), gated=record["gate"] is not None,
                       bias_in=record["bias_in"], bias_gate=record["bias_gate"], bias_out=record["bias_out"],
                       dispatch=record.get("dispatch", "gather"), device=w.device, dtype=w.dtype)
    expert.surgeon_pass = "moefy"
    return expert


def fill(model, site: FfnSite, expert: ExpertFFN, groups, r_weight, r_bias) -> None:
    """Copy the dense weights into ``expert`` by neuron group (gate, up and down share ``groups``)."""
    mlp = site.mlp
    up, down = linear_view(model.get_submodule(mlp.up)), linear_view(model.get_submodule(mlp.down))
    expert.w_in.copy_(up.weight()[groups])
    expert.w_out.copy_(down.weight().T[groups])
    if expert.b_in is not None:
        expert.b_in.copy_(up.bias()[groups])
    if expert.b_out is not None:
        expert.b_out.copy_(down.bias())
    if expert.gated:
        gate = linear_view(model.get_submodule(mlp.gate))
        expert.w_gate.copy_(gate.weight()[groups])
        if expert.b_gate is not None:
            expert.b_gate.copy_(gate.bias()[groups])
    expert.router_weight.copy_(r_weight)
    expert.router_bias.copy_(r_bias)


def install(model: nn.Module, record: dict, expert: nn.Module) -> None:
    """Put ``expert`` in the tree: in place of the MLP, or of ``up`` with ``act``/``down`` as identities."""
    if record["placement"] == "module":
        set_submodule(model, record["path"], expert)
        return
    set_submodule(model, record["up"], expert)
    set_submodule(model, record["act"], nn.Identity())
    set_submodule(model, record["down"], nn.Identity())


def _check_exact(dense, expert: ExpertFFN, x: torch.Tensor, path: str) -> None:
    sample = x[:512]
    ref, out = dense(sample).double(), expert(sample).double()
    err = float((ref - out).norm() / ref.norm().clamp_min(1e-30))
    if not err <= EXACT_RTOL:
        raise CertificationError(f"moefy with top_k = num_experts changed {path} by relative error {err:.2e}",
                                 where=path, fix="This is a bug in moefy; report the model and recipe")
