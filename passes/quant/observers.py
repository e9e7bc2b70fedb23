"""Observers: set static activation ranges, LSQ/ASQ steps and log Δ from calibration batches.

Methods (the ``observer`` option of ``fake_quant``):
- ``minmax``: the running minimum and maximum;
- ``percentile``: the ``percentile``-th and (100 − ``percentile``)-th percentiles of a kept sample;
- ``mse``: the min-max range scaled by the ratio in [0.5, 1] with the least squared quantisation error
  on the sample (uniform, fp8, POST); for log quantizers Δ is chosen among the max and the 0.999,
  0.9999, 0.99999 quantiles by least squared error (RepQ-ViT's rule).
Observation runs the model with every quantizer passing its input through unchanged (full precision).
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.passes.quant import formats as F
from surgeon.passes.quant.quantizers import Quantizer, best_clip, quantizers
from surgeon.runner import run_model

SAMPLE_ROWS = 4096  # rows (tokens) kept per quantizer for percentile / MSE
LOG_QUANTILES = (0.999, 0.9999, 0.99999)


class Observer:
    """Running min/max per channel and a bounded random sample of rows of one quantizer's input."""

    def __init__(self, seed: int = 0, flat: bool = False):
        self.flat = flat  # log (softmax) quantizers: widths vary with the sequence, keep single values
        self.lo = self.hi = None
        self.rows: list[torch.Tensor] = []
        self.kept = 0
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        """Fold one tensor (..., C) into the statistics."""
        x2 = x.float().reshape(-1, 1 if self.flat else x.shape[-1]).cpu()
        lo, hi = x2.amin(0), x2.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        room = SAMPLE_ROWS * (256 if self.flat else 1) - self.kept
        if room > 0:
            take = x2[torch.randperm(x2.shape[0], generator=self.gen)[:room]]
            self.rows.append(take)
            self.kept += take.shape[0]

    def sample(self) -> torch.Tensor:
        """The kept rows, (N, C)."""
        return torch.cat(self.rows)


def needs_observation(q: Quantizer) -> bool:
    """Whether ``q`` has state that comes from activations (static ranges, ASQ step, log Δ)."""
    return q.role != "weight" and (q.static or q.spec.mode == "asq")


@torch.no_grad()
def observe(model: nn.Module, batches: list, method: str = "minmax", percentile: float = 99.99) -> int:
    """Run ``batches`` through ``model`` and initialise every quantizer that needs it; returns how many."""
    targets = [q for q in quantizers(model) if needs_observation(q)]
    if not targets:
        return 0
    others = [q for q in quantizers(model) if q not in targets]
    for q in targets:
        q.observer = Observer(flat=q.spec.is_log)
    for q in others:
        q.enabled = False
    try:
        for batch in batches:
            run_model(model, batch)
    finally:
        for q in others:
            q.enabled = True
        observers = {id(q): q.observer for q in targets}
        for q in targets:
            q.observer = None
    for q in targets:
        finish(q, observers[id(q)], method, percentile)
    return len(targets)


@torch.no_grad()
def finish(q: Quantizer, obs: Observer, method: str, percentile: float) -> None:
    """Set ``q``'s state from its observer's statistics."""
    s = q.spec
    device = next(q.buffers(), torch.empty(0)).device
    sample = obs.sample()
    if s.is_log:
        q.delta.copy_(log_delta(sample, s.bits, s.fmt == "logsqrt2", method).to(device))
        return
    if s.mode == "asq":  # ref = mean per-token range, s = ref / span: ASQ starts at per-token RTN
        m = sample.abs().amax(1) if s.symmetric else sample.amax(1) - sample.amin(1)
        ref = m.mean().clamp_min(F.SCALE_MIN)
        span = q.qmax if s.symmetric else q.qmax - q.qmin
        q.ref.copy_(ref.reshape(1).to(device))
        q.step.copy_((ref / span).reshape(1).to(device))
        return
    per_channel = s.granularity == "channel"
    if method == "percentile":
        flat = sample if per_channel else sample.reshape(-1, 1)
        hi = torch.quantile(flat, percentile / 100, dim=0)
        lo = torch.quantile(flat, 1 - percentile / 100, dim=0)
    else:
        lo, hi = obs.lo, obs.hi
        if not per_channel:
            lo, hi = lo.min().reshape(1), hi.max().reshape(1)
    if method == "mse":
        if s.mode == "lsq" or s.mode == "rtn":
            ratio = best_clip(q, sample, lo, hi)
            lo, hi = lo * ratio, hi * ratio
    q.set_range(lo.to(device), hi.to(device))


def log_delta(sample: torch.Tensor, bits: int, sqrt2: bool, method: str) -> torch.Tensor:
    """Δ of a log quantizer: the maximum, or (``mse``) the candidate quantile with least squared error."""
    flat = sample.reshape(-1)
    top = flat.max().clamp_min(1e-8).reshape(1)
    if method != "mse":
        return top
    best, best_err = top, float("inf")
    candidates = [top] + [torch.quantile(flat[:1_000_000], p).clamp_min(1e-8).reshape(1) for p in LOG_QUANTILES]
    for delta in candidates:
        err = float((F.fake_log(flat, delta, bits, sqrt2) - flat).pow(2).sum())
        if err < best_err:
            best, best_err = delta, err
    return best
