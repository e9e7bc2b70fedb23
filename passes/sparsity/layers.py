"""Modules that sparsify the input of a Linear-like layer. Shapes: x (..., in) → y (..., out).

Each wraps the original layer as ``inner`` (state-dict keys gain ``.inner``) and creates every buffer from
plain sizes, so a saved model rebuilds them on ``meta`` before its tensors load.
"""

from __future__ import annotations

import torch
from torch import nn


class ThresholdSparseLinear(nn.Module):
    """``y = inner(x ⊙ m) [+ U (V (x ⊙ (1 − m)))]`` with ``m = 1[|x| · scale > threshold]``.

    - TEAL: ``scale`` = 1;
    - WINA: ``scale_j`` = ‖W_{:,j}‖₂ (column norms of the (out, in) weight);
    - R-Sparse: ``scale`` = column norms and a rank-``rank`` branch ``U`` (out, r), ``V`` (r, in) from the
      weight's truncated SVD carries the masked channels.
    ``threshold`` is a scalar buffer calibrated by the pass.
    """

    def __init__(self, inner: nn.Module, in_features: int, out_features: int, rank: int = 0):
        super().__init__()
        self.inner = inner
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        ref = next(inner.parameters(), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.register_buffer("threshold", torch.zeros((), **kw))
        self.register_buffer("scale", torch.ones(in_features, **kw))
        if rank > 0:
            self.register_buffer("lowrank_u", torch.zeros(out_features, rank, **kw))
            self.register_buffer("lowrank_v", torch.zeros(rank, in_features, **kw))
        self.surgeon_pass = "sparsity"

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The keep-mask (same dtype as ``x``): 1 where the channel's score exceeds the threshold."""
        return ((x.abs() * self.scale) > self.threshold).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask(x)
        y = self.inner(x * m)
        if self.rank > 0:
            y = y + (x * (1 - m)) @ self.lowrank_v.t() @ self.lowrank_u.t()
        return y


class TopKSparseLinear(nn.Module):
    """``y = inner(TopK_k(x))``: per token keep the ``keep`` entries of largest magnitude, zero the rest.

    Lazy-neuron top-k (Li et al., 2023) on an MLP's hidden activation (the down projection's input).
    For a ReLU MLP the largest magnitudes are the largest values, as in the paper.
    """

    def __init__(self, inner: nn.Module, keep: int):
        super().__init__()
        self.inner = inner
        self.keep = keep
        self.surgeon_pass = "topk"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x.abs().topk(self.keep, dim=-1).indices
        m = torch.zeros_like(x).scatter(-1, index, 1.0)
        return self.inner(x * m)
