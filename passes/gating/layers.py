"""Dopamine neuron gates: a per-neuron threshold τ and gain g on an MLP's hidden activation h (width d_ff).

Smooth (training): ``h' = g·h·σ((h − τ)/T)``. Hard (inference): ``h' = g·h·1[h > τ]``, the limit of the
smooth gate as T → 0. σ(z) is computed as ``1 − σ(−z)`` so that an open gate (z ≫ 0) multiplies h by
exactly 1 in floating point while its gradient with respect to τ stays nonzero (σ(−z) is tiny but
representable), which is what lets the pass be exact at initialisation and still train τ.
"""

from __future__ import annotations

import torch
from torch import nn


class NeuronGate(nn.Module):
    """Gate of ``width`` neurons: parameters ``tau`` and ``gain`` (width,), buffer ``temperature`` (width,).

    ``hard`` switches to the 0/1 mask (set by ``dopamine_harden``; a Python flag, restored by replay).
    """

    def __init__(self, width: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.width = width
        self.tau = nn.Parameter(torch.zeros(width, **kw))
        self.gain = nn.Parameter(torch.ones(width, **kw))
        self.register_buffer("temperature", torch.ones(width, **kw))
        self.hard = False

    def open_share(self, h: torch.Tensor) -> torch.Tensor:
        """The gate's multiplier on h without the gain: σ((h − τ)/T), or 1[h > τ] when hard."""
        if self.hard:
            return (h > self.tau).to(h.dtype)
        return 1 - torch.sigmoid((self.tau - h) / self.temperature)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.gain * h * self.open_share(h)

    def extra_repr(self) -> str:
        return f"width={self.width}, hard={self.hard}"


class GatedLinear(nn.Module):
    """``y = inner(gate(h))``: an MLP's down projection reading gated hidden activations."""

    def __init__(self, inner: nn.Module, gate: NeuronGate):
        super().__init__()
        self.inner = inner
        self.gate = gate
        self.surgeon_pass = "dopamine"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner(self.gate(h))
