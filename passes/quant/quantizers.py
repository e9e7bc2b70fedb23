"""Fake quantizers as modules: one :class:`Quantizer` class driven by a :class:`~.spec.QuantSpec`.

Every parameter and buffer is created in ``__init__`` from the spec string, the role and a shape, so a
saved model rebuilds its quantizers on ``meta`` and loads their tensors. Shapes:

- ``role="weight"``, ``shape=(out, in)``: statistics per row of the weight reshaped to (rows, cols) with
  rows = 1 (tensor), out (channel) or out·in/g (g<N); clip/step tensors are (rows, 1).
- activations (``input``, ``output``, ``softmax``), ``shape=(C,)``: static ``tensor``/``channel`` keep
  observed ranges ``lo``/``hi`` of shape (1,) or (C,); dynamic ``token``/``g<N>`` compute ranges per row of
  x reshaped to (−1, C) or (−1, g) on every call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgeon.passes.quant import formats as F
from surgeon.passes.quant.spec import QuantSpec, parse

LWC_INIT = 4.0  # OmniQuant's initial clipping logit: sigmoid(4) ≈ 0.982
ASQ_HIDDEN = 8


class AsqAdapter(nn.Module):
    """ASQ's step adapter: per-token statistics → factor β > 0; starts at β = 1 (the last layer is zero).

    Input features are log(max|x|), log(mean|x|) and log(std x) of each token relative to ``reach`` (the
    quantizer's observed mean per-token range, a buffer), so the adapter sees scale-free numbers. β = exp(tanh(·)) keeps it within [1/e, e].
    """

    def __init__(self, hidden: int = ASQ_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
        """β for each row of ``x`` (shape (..., 1)); statistics are detached (they are inputs, not targets)."""
        with torch.no_grad():
            a = x.abs()
            feats = torch.stack([a.amax(-1), a.mean(-1), x.std(-1, unbiased=False)], -1)
            feats = torch.log(feats / reach + 1e-6)
        return torch.exp(torch.tanh(self.net(feats.to(self.net[0].weight.dtype)))).to(x.dtype)


class Quantizer(nn.Module):
    """Fake quantizer of one site (see the module docstring for shapes); identity when disabled.

    ``enabled`` switches quantisation off (block-wise calibration computes full-precision targets with it);
    ``observer`` (set by :mod:`.observers`) makes ``forward`` record statistics and return ``x`` unchanged.
    """

    def __init__(self, spec: str | QuantSpec, role: str, shape: tuple[int, ...]):
        super().__init__()
        self.spec = spec if isinstance(spec, QuantSpec) else parse(spec, field=role, role=role)
        self.role = role
        self.shape = tuple(int(s) for s in shape)
        self.enabled = True
        self.observer = None
        s = self.spec
        self.qmin, self.qmax = F.int_range(s.bits, s.symmetric)
        stat = self._stat_shape()
        if s.is_log:
            self.register_buffer("delta", torch.ones(1))
            return
        if self.static:
            self.register_buffer("lo", torch.zeros(stat))
            self.register_buffer("hi", torch.ones(stat))
        if s.mode == "rtn":
            self.register_buffer("clip", torch.ones(stat))
        elif s.mode == "lwc":
            self.upper = nn.Parameter(torch.full(stat, LWC_INIT))
            self.lower = nn.Parameter(torch.full(stat, LWC_INIT))
        elif s.mode == "lsq":
            self.step = nn.Parameter(torch.ones(stat))
            self.register_buffer("zero", torch.zeros(stat))
        elif s.mode == "asq":
            self.step = nn.Parameter(torch.ones(1))
            self.register_buffer("ref", torch.ones(1))  # observed mean per-token range (see _asq)
            self.adapter = AsqAdapter()

    @property
    def static(self) -> bool:
        """Activation ranges fixed by the observer (``tensor``/``channel`` activations, log quantizers)."""
        return self.role != "weight" and self.spec.granularity in ("tensor", "channel")

    def _stat_shape(self) -> tuple[int, ...]:
        s = self.spec
        if self.role == "weight":
            out, cols = self.shape
            rows = {"tensor": 1, "channel": out, "group": out * cols // max(s.group, 1)}[s.granularity]
            return (rows, 1)
        if s.granularity == "channel":
            return (self.shape[-1],)
        return (1,) if self.static or s.is_log else (1, 1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` reshaped so each row shares one step (weights and dynamic activations)."""
        s = self.spec
        if self.role == "weight":
            return x.reshape(self._stat_shape()[0], -1)
        return x.reshape(-1, s.group if s.granularity == "group" else x.shape[-1])

    def extra_repr(self) -> str:
        return f"{self.role}: {self.spec.text()}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observer is not None:
            self.observer.update(x.detach())
            return x
        s = self.spec
        if s.is_log:
            return F.fake_log(x, self.delta.to(x.dtype), s.bits, s.fmt == "logsqrt2")
        if self.static:
            return self._quantise(x, self.lo, self.hi)
        x2 = self.rows(x)
        return self._quantise(x2, x2.amin(1, keepdim=True), x2.amax(1, keepdim=True)).reshape(x.shape)

    def _quantise(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.mode == "lsq":
            factor = 1.0 / math.sqrt(max(x.numel() // self.step.numel(), 1) * self.qmax)
            return F.fake_uniform(x, F.grad_scale(self.step, factor), self.zero, self.qmin, self.qmax)
        if s.mode == "asq":
            return self._asq(x)
        lo, hi = self.clipped(lo, hi)
        if s.fmt == "int":
            step, zero = F.uniform_params(lo, hi, s.bits, s.symmetric)
            return F.fake_uniform(x, step, zero, self.qmin, self.qmax)
        reach = torch.maximum(lo.abs(), hi.abs()).clamp_min(F.SCALE_MIN)
        if s.fmt == "post":
            return F.fake_post(x, reach, s.bits)
        return F.fake_fp8(x, reach / F.fp8_max(s.fmt), s.fmt)

    def clipped(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range after clipping: a fixed ratio (rtn; the MSE observer sets it) or LWC's σ(u), σ(l)."""
        if self.spec.mode == "lwc":
            return torch.sigmoid(self.lower) * lo, torch.sigmoid(self.upper) * hi
        return self.clip * lo, self.clip * hi

    def _asq(self, x: torch.Tensor) -> torch.Tensor:
        # x is (tokens, C). ASQ: s_a = s·β(x). We dequantise with s_a (not s), so the grid stays consistent
        # when β moves away from 1 (METHODS.md B.10 leaves this open; the paper's code is not public).
        # β = (m_t / ref)·exp(tanh(adapter)): m_t is the token's range (max|x| sym, max − min asym) and ref
        # its observed mean, with s starting at ref / span. So calibration starts at per-token RTN exactly
        # (the adapter's last layer is zero) and learns a global clip (s) and a per-token correction; a
        # plain zero-initialised adapter (β = 1) starts ASQ as a *static* per-tensor quantizer instead,
        # which short post-training calibration cannot recover (see docs/passes/quant.md).
        factor = 1.0 / math.sqrt(x.shape[-1] * self.qmax)
        step = F.grad_scale(self.step, factor)
        with torch.no_grad():
            lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
            m = torch.maximum(lo.abs(), hi.abs()) if self.spec.symmetric else hi - lo
            ratio = (m / self.ref).clamp_min(F.SCALE_MIN)
        beta = self.adapter(x, self.ref)
        step_a = (step * ratio * beta).clamp(F.SCALE_MIN, F.SCALE_MAX)
        zero = torch.zeros_like(step_a) if self.spec.symmetric else F.round_ste(-lo / step_a)
        return F.fake_uniform(x, step_a, zero, self.qmin, self.qmax)

    def grid(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(step, zero) of an int weight quantizer for weight ``w``, exactly as ``forward`` computes them."""
        s = self.spec
        if s.fmt != "int" or self.role != "weight" or s.mode == "asq":
            raise ValueError(f"{s.text()} has no integer grid to store")
        if s.mode == "lsq":
            return self.step.detach(), self.zero
        w2 = self.rows(w)
        lo, hi = self.clipped(w2.amin(1, keepdim=True), w2.amax(1, keepdim=True))
        step, zero = F.uniform_params(lo, hi, s.bits, s.symmetric)
        return step.detach(), zero.detach()

    @torch.no_grad()
    def init_from_weight(self, w: torch.Tensor, observer: str = "minmax") -> None:
        """Set the clip ratio (``observer="mse"``: per-row search) or LSQ's step from weight ``w``."""
        s = self.spec
        w2 = self.rows(w.float())
        lo, hi = w2.amin(1, keepdim=True), w2.amax(1, keepdim=True)
        if observer == "mse" and s.mode in ("rtn", "lsq"):
            ratio = best_clip(self, w2, lo, hi)
            lo, hi = lo * ratio, hi * ratio
            if s.mode == "rtn":
                self.clip.copy_(ratio)
        if s.mode == "lsq":
            step, zero = F.uniform_params(lo, hi, s.bits, s.symmetric)
            self.step.copy_(step)
            self.zero.copy_(zero)

    @torch.no_grad()
    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set a static activation range (and LSQ's step/zero from it)."""
        s = self.spec
        self.lo.copy_(lo.reshape(self.lo.shape))
        self.hi.copy_(hi.reshape(self.hi.shape))
        if s.mode == "lsq":
            step, zero = F.uniform_params(self.lo, self.hi, s.bits, s.symmetric)
            self.step.copy_(step)
            self.zero.copy_(zero)


CLIP_RATIOS = torch.linspace(1.0, 0.5, 21)


@torch.no_grad()
def best_clip(quant: Quantizer, x2: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per row of ``x2``, the ratio in CLIP_RATIOS whose clipped range gives the least squared error."""
    s = quant.spec
    best_err = torch.full_like(lo, math.inf)
    best = torch.ones_like(lo)
    for r in CLIP_RATIOS.tolist():
        l, h = lo * r, hi * r
        if s.fmt == "int":
            step, zero = F.uniform_params(l, h, s.bits, s.symmetric)
            q = F.fake_uniform(x2, step, zero, quant.qmin, quant.qmax)
        elif s.fmt == "post":
            q = F.fake_post(x2, torch.maximum(l.abs(), h.abs()).clamp_min(F.SCALE_MIN), s.bits)
        else:
            q = F.fake_fp8(x2, torch.maximum(l.abs(), h.abs()).clamp_min(F.SCALE_MIN) / F.fp8_max(s.fmt), s.fmt)
        sq = (q - x2).pow(2)
        err = sq.sum(1, keepdim=True) if quant.role == "weight" else (
            sq.sum(0) if lo.numel() > 1 else sq.sum().reshape(lo.shape))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


def quantizers(module: nn.Module):
    """Every :class:`Quantizer` inside ``module``."""
    return [m for m in module.modules() if isinstance(m, Quantizer)]


def set_enabled(module: nn.Module, enabled: bool) -> None:
    """Switch every quantizer inside ``module`` on or off."""
    for q in quantizers(module):
        q.enabled = enabled
