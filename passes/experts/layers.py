"""Expert layers built from a dense FFN: :class:`ExpertFFN` (MoEfication) and :class:`FeatureModulated` (MoFME).

Both run every expert through one gathered or batched matmul: there is no Python loop over experts, so
the modules trace into fx as a handful of nodes. Every parameter is created in ``__init__`` from plain
sizes, so a saved model rebuilds them on ``meta`` and then loads the tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _empty(*shape, device=None, dtype=None) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))


class ExpertFFN(nn.Module):
    """A dense FFN split into ``num_experts`` equal neuron groups with a linear top-k router.

    Shapes: x (..., d) → y (..., d). Expert e owns ``expert_size = d_ff / E`` neurons:
    ``w_in[e]`` (m, d) and ``b_in[e]`` (m) are its rows of the first layer, ``w_gate``/``b_gate`` the
    same rows of the gate (gated MLPs only), ``w_out[e]`` (m, d) its columns of the second layer
    (transposed), ``b_out`` (d) the second layer's bias, added once. The router scores
    ``x·router_weightᵀ + router_bias`` (E); the ``top_k`` best experts run, unweighted
    (MoEfication keeps each expert's output as is), so ``top_k == num_experts`` is the dense FFN:

        y = Σ_{e ∈ TopK(x)} w_out[e]ᵀ · h_e(x) + b_out,
        h_e = act(w_in[e] x + b_in[e])                              (plain)
        h_e = act(w_gate[e] x + b_gate[e]) ⊙ (w_in[e] x + b_in[e])  (gated)

    The selected experts' weights are gathered per token, so the multiply-adds executed are
    ``top_k / num_experts`` of the dense FFN's plus the router's. ``dispatch="masked"`` computes the
    same function by running every expert as one batched matmul and zeroing the unselected ones: more
    multiply-adds, but plain GEMMs, which is faster on CPU for many tokens (the gathered weights are
    ``tokens·k·m·d`` floats).
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int, act: nn.Module, *,
                 gated: bool = False, bias_in: bool = True, bias_gate: bool = True, bias_out: bool = True,
                 dispatch: str = "gather", device=None, dtype=None):
        super().__init__()
        if d_ff % num_experts:
            raise ValueError(f"d_ff={d_ff} is not divisible by num_experts={num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, {num_experts}]")
        m = d_ff // num_experts
        if dispatch not in ("gather", "masked"):
            raise ValueError(f"dispatch must be 'gather' or 'masked', got {dispatch!r}")
        self.d_model, self.d_ff, self.num_experts, self.top_k, self.gated = d_model, d_ff, num_experts, top_k, gated
        self.dispatch = dispatch
        self.act = act
        kw = {"device": device, "dtype": dtype}
        self.w_in = _empty(num_experts, m, d_model, **kw)
        self.b_in = _empty(num_experts, m, **kw) if bias_in else None
        self.w_gate = _empty(num_experts, m, d_model, **kw) if gated else None
        self.b_gate = _empty(num_experts, m, **kw) if gated and bias_gate else None
        self.w_out = _empty(num_experts, m, d_model, **kw)
        self.b_out = _empty(d_model, **kw) if bias_out else None
        self.router_weight = _empty(num_experts, d_model, **kw)
        self.router_bias = _empty(num_experts, **kw)

    @property
    def expert_size(self) -> int:
        """Neurons per expert (d_ff / E)."""
        return self.d_ff // self.num_experts

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Indices (..., top_k) of the experts each token runs."""
        logits = F.linear(x, self.router_weight, self.router_bias)
        return logits.topk(self.top_k, dim=-1).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dispatch == "masked":
            return self._forward_masked(x)
        idx = self.route(x)
        # Gather the selected experts' rows per token: (..., k, m, d); one einsum then does all of them.
        h = torch.einsum("...kmd,...d->...km", self.w_in[idx], x)
        if self.b_in is not None:
            h = h + self.b_in[idx]
        if self.gated:
            g = torch.einsum("...kmd,...d->...km", self.w_gate[idx], x)
            if self.b_gate is not None:
                g = g + self.b_gate[idx]
            h = self.act(g) * h
        else:
            h = self.act(h)
        y = torch.einsum("...km,...kmd->...d", h, self.w_out[idx])
        if self.b_out is not None:
            y = y + self.b_out
        return y

    def _forward_masked(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.route(x)
        keep = torch.zeros(idx.shape[:-1] + (self.num_experts,), dtype=x.dtype, device=x.device)
        keep = keep.scatter(-1, idx, 1.0)
        h = torch.einsum("...d,emd->...em", x, self.w_in)
        if self.b_in is not None:
            h = h + self.b_in
        if self.gated:
            g = torch.einsum("...d,emd->...em", x, self.w_gate)
            if self.b_gate is not None:
                g = g + self.b_gate
            h = self.act(g) * h
        else:
            h = self.act(h)
        y = torch.einsum("...em,emd->...d", h * keep.unsqueeze(-1), self.w_out)
        if self.b_out is not None:
            y = y + self.b_out
        return y

    def flops_per_token(self) -> int:
        """Multiply-adds ×2 per token: the router plus ``top_k`` experts."""
        return 2 * self.d_model * self.num_experts + self.top_k * self.expert_size * self.d_model * 2 * (
            3 if self.gated else 2)

    def dense_flops_per_token(self) -> int:
        """Multiply-adds ×2 per token of the dense FFN this was built from."""
        return 2 * self.d_model * self.d_ff * (3 if self.gated else 2)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, gated={self.gated}, dispatch={self.dispatch}")


class FeatureModulated(nn.Module):
    """MoFME: ``inner`` (the dense block, shared by every expert) applied to a routed FiLM of its input.

    Shapes: x (..., d) → inner(z), with
        z = Σ_{e ∈ TopK} w_e · ((U_e x + c_e) ⊙ x + (V_e x + d_e)),   w = softmax over the top-k logits,
    U_e, V_e (d, d), c_e, d_e (d): ``film_scale``/``film_shift`` (E, d, d) and ``scale_bias``/
    ``shift_bias`` (E, d). Identity experts (U = V = 0, c = 1, d = 0) make z = x, since the weights sum
    to 1. All E modulations run as one batched einsum and the non-selected weights are zero.

    Uncertainty-aware routing (training only, ``uncertainty_samples`` = S > 0): the router input is
    dropped out S times and the routing probabilities averaged (a Monte-Carlo estimate). In eval the
    router runs once without dropout, so inference is deterministic.
    """

    def __init__(self, inner: nn.Module, d_model: int, num_experts: int, top_k: int, *,
                 uncertainty_samples: int = 0, router_dropout: float = 0.1, device=None, dtype=None):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, {num_experts}]")
        self.inner = inner
        self.d_model, self.num_experts, self.top_k = d_model, num_experts, top_k
        self.uncertainty_samples, self.router_dropout = uncertainty_samples, router_dropout
        kw = {"device": device, "dtype": dtype}
        self.film_scale = _empty(num_experts, d_model, d_model, **kw)
        self.scale_bias = _empty(num_experts, d_model, **kw)
        self.film_shift = _empty(num_experts, d_model, d_model, **kw)
        self.shift_bias = _empty(num_experts, d_model, **kw)
        self.router = nn.Linear(d_model, num_experts, **kw)

    def reset_identity(self, generator: torch.Generator | None = None) -> None:
        """Identity experts and a small random router (N(0, 0.02²)): the block equals ``inner``."""
        with torch.no_grad():
            self.film_scale.zero_()
            self.film_shift.zero_()
            self.scale_bias.fill_(1.0)
            self.shift_bias.zero_()
            w = torch.randn(self.router.weight.shape, generator=generator) * 0.02
            self.router.weight.copy_(w)
            self.router.bias.zero_()

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Dense (..., E) weights: softmax over the top-k logits, zero elsewhere."""
        if self.training and self.uncertainty_samples > 0:
            probs = torch.stack([F.softmax(self.router(F.dropout(x, self.router_dropout, True)), dim=-1)
                                 for _ in range(self.uncertainty_samples)]).mean(0)
            scores = probs.log()
        else:
            scores = self.router(x)
        top = scores.topk(self.top_k, dim=-1)
        masked = torch.full_like(scores, float("-inf")).scatter(-1, top.indices, top.values)
        return F.softmax(masked, dim=-1)

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        """z = Σ_e w_e·FME_e(x), all experts in one batched einsum."""
        w = self.routing_weights(x)
        scale = torch.einsum("...f,egf->...eg", x, self.film_scale) + self.scale_bias
        shift = torch.einsum("...f,egf->...eg", x, self.film_shift) + self.shift_bias
        experts = scale * x.unsqueeze(-2) + shift  # (..., E, d)
        return torch.einsum("...e,...ed->...d", w, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.modulate(x))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}"


class MohdFFN(nn.Module):
    """MoHD on an FFN's hidden dimension: shared groups always run, routed groups are chosen per token.

    Shapes: x (..., d) → y (..., d). The d_ff hidden units are split into ``num_groups`` (G) groups of
    ``m = d_ff / G`` units; groups ``0 .. num_shared−1`` (S) are shared, the other ``G − S`` are routed.
    ``w_in``/``b_in``/``w_gate``/``b_gate``/``w_out`` hold each group's rows as in :class:`ExpertFFN`.
    The router scores the routed groups (``router_weight`` (G−S, d), ``router_bias`` (G−S)) and the
    ``top_k`` best run. With K(x) the chosen set, c_g(x) = w_out[g]ᵀ·h_g(x) a group's contribution:

        y = Σ_{g < S} c_g(x) + scale · Σ_{g ∈ K(x)} c_g(x) + Σ_{g ∉ K(x)} fusion_mean[g] + b_out

    ``scale`` (a scalar) is the activation scaling of the routed part; ``fusion_mean`` (G−S, d), present
    when ``fusion`` is on, stands in for the routed groups that did not run (their calibration mean
    contribution when not chosen). With ``top_k = G − S`` and ``scale = 1`` the block is the dense FFN.
    ``dispatch="gather"`` gathers the chosen groups' weights per token; ``"masked"`` runs every routed
    group as one GEMM and zeroes the others (the same function, faster on CPU for long inputs).
    """

    def __init__(self, d_model: int, d_ff: int, num_groups: int, num_shared: int, top_k: int, act: nn.Module, *,
                 gated: bool = False, bias_in: bool = True, bias_gate: bool = True, bias_out: bool = True,
                 fusion: bool = True, dispatch: str = "gather", device=None, dtype=None):
        super().__init__()
        if d_ff % num_groups:
            raise ValueError(f"d_ff={d_ff} is not divisible by num_groups={num_groups}")
        if not 0 <= num_shared < num_groups:
            raise ValueError(f"num_shared={num_shared} must be in [0, {num_groups - 1}]")
        if not 1 <= top_k <= num_groups - num_shared:
            raise ValueError(f"top_k={top_k} must be in [1, {num_groups - num_shared}]")
        if dispatch not in ("gather", "masked"):
            raise ValueError(f"dispatch must be 'gather' or 'masked', got {dispatch!r}")
        m, routed = d_ff // num_groups, num_groups - num_shared
        self.d_model, self.d_ff, self.num_groups, self.num_shared = d_model, d_ff, num_groups, num_shared
        self.top_k, self.gated, self.dispatch = top_k, gated, dispatch
        self.act = act
        kw = {"device": device, "dtype": dtype}
        self.w_in = _empty(num_groups, m, d_model, **kw)
        self.b_in = _empty(num_groups, m, **kw) if bias_in else None
        self.w_gate = _empty(num_groups, m, d_model, **kw) if gated else None
        self.b_gate = _empty(num_groups, m, **kw) if gated and bias_gate else None
        self.w_out = _empty(num_groups, m, d_model, **kw)
        self.b_out = _empty(d_model, **kw) if bias_out else None
        self.router_weight = _empty(routed, d_model, **kw)
        self.router_bias = _empty(routed, **kw)
        self.scale = _empty((), **kw)
        self.fusion_mean = _empty(routed, d_model, **kw) if fusion else None

    @property
    def group_size(self) -> int:
        """Hidden units per group (d_ff / G)."""
        return self.d_ff // self.num_groups

    @property
    def num_routed(self) -> int:
        """Routed groups (G − S)."""
        return self.num_groups - self.num_shared

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Indices (..., top_k) into the routed groups that each token runs."""
        return F.linear(x, self.router_weight, self.router_bias).topk(self.top_k, dim=-1).indices

    def chosen_mask(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """0/1 mask (..., G−S) of the routed groups in ``idx`` (from :meth:`route`), in ``x``'s dtype."""
        keep = torch.zeros(idx.shape[:-1] + (self.num_routed,), dtype=x.dtype, device=x.device)
        return keep.scatter(-1, idx, 1.0)

    def _hidden(self, x, w_in, b_in, w_gate, b_gate, spec: str) -> torch.Tensor:
        h = torch.einsum(spec, x, w_in)
        if b_in is not None:
            h = h + b_in
        if not self.gated:
            return self.act(h)
        g = torch.einsum(spec, x, w_gate)
        if b_gate is not None:
            g = g + b_gate
        return self.act(g) * h

    def _slice(self, sel):
        def pick(t):
            return None if t is None else t[sel]
        return pick(self.w_in), pick(self.b_in), pick(self.w_gate), pick(self.b_gate), pick(self.w_out)

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over the shared groups of c_g(x), (..., d) (zeros when S = 0)."""
        if self.num_shared == 0:
            return torch.zeros_like(x)
        w_in, b_in, w_gate, b_gate, w_out = self._slice(slice(0, self.num_shared))
        h = self._hidden(x, w_in, b_in, w_gate, b_gate, "...d,smd->...sm")
        return torch.einsum("...sm,smd->...d", h, w_out)

    def routed_contributions(self, x: torch.Tensor) -> torch.Tensor:
        """c_g(x) of every routed group, (..., G−S, d): for fitting the scaling and fusion terms."""
        w_in, b_in, w_gate, b_gate, w_out = self._slice(slice(self.num_shared, None))
        h = self._hidden(x, w_in, b_in, w_gate, b_gate, "...d,gmd->...gm")
        return torch.einsum("...gm,gmd->...gd", h, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.route(x)
        keep = self.chosen_mask(idx, x)
        w_in, b_in, w_gate, b_gate, w_out = self._slice(slice(self.num_shared, None))
        if self.dispatch == "gather":
            h = self._hidden(x, w_in[idx], None if b_in is None else b_in[idx], None if w_gate is None else w_gate[idx],
                             None if b_gate is None else b_gate[idx], "...d,...kmd->...km")
            routed = torch.einsum("...km,...kmd->...d", h, w_out[idx])
        else:
            h = self._hidden(x, w_in, b_in, w_gate, b_gate, "...d,gmd->...gm")
            routed = torch.einsum("...gm,gmd->...d", h * keep.unsqueeze(-1), w_out)
        y = self.shared_output(x) + self.scale * routed
        if self.fusion_mean is not None:
            y = y + torch.einsum("...g,gd->...d", 1.0 - keep, self.fusion_mean)
        if self.b_out is not None:
            y = y + self.b_out
        return y

    def flops_per_token(self) -> int:
        """Multiply-adds ×2 per token: router, shared and chosen groups, and the fusion term if present."""
        per_group = self.group_size * self.d_model * 2 * (3 if self.gated else 2)
        extra = 2 * self.d_model * self.num_routed * (2 if self.fusion_mean is not None else 1)
        return extra + (self.num_shared + self.top_k) * per_group

    def dense_flops_per_token(self) -> int:
        """Multiply-adds ×2 per token of the dense FFN this was built from."""
        return 2 * self.d_model * self.d_ff * (3 if self.gated else 2)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_groups={self.num_groups}, "
                f"num_shared={self.num_shared}, top_k={self.top_k}, gated={self.gated}, "
                f"fusion={self.fusion_mean is not None}, dispatch={self.dispatch}")
