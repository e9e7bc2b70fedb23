"""Where an FFN can become experts, how the new module goes in, and calibration activations of FFNs.

Two placements keep the surrounding model code untouched:
- ``module``: the MLP module itself is replaced (gated MLPs, whose ``act(gate(x)) * up(x)`` lives in the
  MLP's forward). Allowed only when the MLP's captured graph returns the ``down`` projection's output.
- ``fused``: for plain and split (BERT-style) MLPs with an activation module, ``up`` is replaced by the
  expert module (which computes the whole FFN), and ``act`` and ``down`` become ``nn.Identity``; any
  dropout between them is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surgeon.calibration import collect_inputs
from surgeon.patterns import MlpSite, linear_view, mlp_sites
from surgeon.pipeline.registry import Found, Site


@dataclass(frozen=True)
class FfnSite:
    """An FFN that can be converted: the matched MLP, its placement, and the dense sizes."""

    mlp: MlpSite
    placement: str  # "module" | "fused"
    d_model: int
    d_ff: int


def ffn_sites(cap) -> tuple[list[FfnSite], list[tuple[str, str]]]:
    """Every convertible MLP of the capture, and (path, reason) for those that are not."""
    sites, skipped = [], []
    for mlp in mlp_sites(cap):
        model = cap.model
        up = linear_view(model.get_submodule(mlp.up))
        placement, why = _placement(cap, mlp)
        if placement is None:
            skipped.append((mlp.path, why))
            continue
        sites.append(FfnSite(mlp, placement, up.in_features, up.out_features))
    return sites, skipped


def _placement(cap, mlp: MlpSite) -> tuple[str | None, str]:
    if mlp.act is None:
        return None, "functional activation: no module to carry into the experts"
    if mlp.kind == "gated":
        scope = cap.scope_at(mlp.path)
        prefix = mlp.path + "."
        if scope is None or not scope.ok or not mlp.down.startswith(prefix):
            return None, "gated MLP is not its own captured module"
        out = next(n for n in scope.graph.nodes if n.op == "output")
        ret = out.args[0]
        if isinstance(ret, (tuple, list)) and len(ret) == 1:  # scope roots return flattened outputs
            ret = ret[0]
        if not (isinstance(ret, torch.fx.Node) and ret.op == "call_module"
                and ret.target == mlp.down[len(prefix):]):
            return None, "the MLP module returns more than its down projection"
        return "module", ""
    return "fused", ""


def dense_reference(model: nn.Module, site: FfnSite):
    """The dense FFN x ↦ down(act(up x) [⊙ ...]) from the *current* modules, for checks and targets."""
    mlp = site.mlp
    if site.placement == "module":
        return model.get_submodule(mlp.path)
    up, act, down = (model.get_submodule(p) for p in (mlp.up, mlp.act, mlp.down))
    return lambda x: down(act(up(x)))


def hidden_activations(model: nn.Module, site: FfnSite, x: torch.Tensor) -> torch.Tensor:
    """The FFN's hidden units h (tokens, d_ff) for inputs x (tokens, d): act(up x), or act(gate x)·up x."""
    mlp = site.mlp
    up = model.get_submodule(mlp.up)
    act = model.get_submodule(mlp.act)
    if mlp.kind == "gated":
        return act(model.get_submodule(mlp.gate)(x)) * up(x)
    return act(up(x))


def ffn_inputs(model: nn.Module, sites: list[FfnSite], batches: list) -> dict[str, torch.Tensor]:
    """Each site's FFN inputs over ``batches`` as (tokens, d), padding tokens (attention_mask 0) dropped."""
    inputs = collect_inputs(model, [s.mlp.up for s in sites], batches, dtype=torch.float32, drop_padding=True)
    return {s.mlp.path: inputs[s.mlp.up] for s in sites}


def divisible_sites(cap, count: int, option: str) -> Found:
    """FFN sites whose hidden width splits into ``count`` parts; the rest skipped, naming ``option``."""
    sites, skipped = ffn_sites(cap)
    found = []
    for s in sites:
        if s.d_ff % count:
            skipped.append((s.mlp.path, f"d_ff={s.d_ff} is not divisible by {option}={count}"))
        else:
            found.append(Site(s.mlp.path, s.mlp.path, data=s))
    return Found(found, skipped)
