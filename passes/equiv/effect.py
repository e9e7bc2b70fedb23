"""What calibration did to the activations a learnable transform produces (QSUR and outlier statistics).

``calibrate_quant`` samples each learnable transform's input while it computes the full-precision targets
of a block, then, after training, compares the statistics of that input as it is (before any
transform), after the transform it started from, and after the trained one. OSTQuant argues with QSUR;
kurtosis and max/mean show the outliers.
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.passes.equiv.layers import learnable_transforms
from surgeon.passes.equiv.stats import activation_stats

MAX_ROWS = 2048
KEYS = ("max_over_mean", "kurtosis", "qsur_per_dim")


class TransformEffect:
    """Samples the learnable transforms' inputs in ``module`` until :meth:`stop`; :meth:`finish` compares."""

    def __init__(self, module: nn.Module):
        self.samples: dict[int, tuple[nn.Module, torch.Tensor, dict, dict]] = {}
        self.handles = [t.register_forward_pre_hook(self._grab) for t in learnable_transforms(module)]

    @torch.no_grad()
    def _grab(self, transform, args):
        if id(transform) in self.samples:
            return
        x = args[0].detach().reshape(-1, args[0].shape[-1])[:MAX_ROWS].float()
        qsur = len(x) > x.shape[-1]  # a covariance needs more tokens than channels
        initial = activation_stats(transform.forward(x).float(), with_qsur=qsur)  # forward: no hook recursion
        self.samples[id(transform)] = (transform, x, activation_stats(x, with_qsur=qsur), initial)

    def stop(self) -> None:
        """Stop sampling (the targets have been computed)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def finish(self) -> list[tuple[dict, dict, dict]]:
        """(raw, initial transform, trained transform) statistics per sampled transform."""
        self.stop()
        out = []
        for transform, x, raw, initial in self.samples.values():
            out.append((raw, initial, activation_stats(transform.forward(x).float(), with_qsur=len(x) > x.shape[-1])))
        return out


def effect_line(effects: list[tuple[dict, dict, dict]]) -> str | None:
    """One report line: each statistic's mean over the transforms, raw → initial → trained."""
    if not effects:
        return None
    parts = []
    for key in KEYS:
        rows = [e for e in effects if all(d[key] == d[key] for d in e)]  # skip NaN (too few tokens)
        if rows:
            means = [sum(r[i][key] for r in rows) / len(rows) for i in range(3)]
            parts.append(f"{key} {means[0]:.3g} → {means[1]:.3g} → {means[2]:.3g}")
    return (f"learnable transforms ({len(effects)}), input statistics raw → initial transform → trained: "
            + "; ".join(parts)) if parts else None
