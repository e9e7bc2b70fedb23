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
        self.rows: dict[int, tuple[nn.Module, list[torch.Tensor]]] = {}
        self.before: dict[int, tuple[torch.Tensor, dict, dict]] = {}
        self.handles = [t.register_forward_pre_hook(self._grab) for t in learnable_transforms(module)]

    @torch.no_grad()
    def _grab(self, transform, args):
        _, rows = self.rows.setdefault(id(transform), (transform, []))
        have = sum(len(r) for r in rows)
        if have < MAX_ROWS:
            rows.append(args[0].detach().reshape(-1, args[0].shape[-1])[: MAX_ROWS - have].float())

    @torch.no_grad()
    def stop(self) -> None:
        """Stop sampling (the targets have been computed) and measure the untrained transforms."""
        for h in self.handles:
            h.remove()
        self.handles = []
        for key, (transform, rows) in self.rows.items():
            if key in self.before or not rows:
                continue
            x = torch.cat(rows)
            qsur = len(x) > x.shape[-1]  # a covariance needs more tokens than channels
            # forward(), not __call__: no hooks, and no recursion into _grab.
            self.before[key] = (x, activation_stats(x, with_qsur=qsur),
                                activation_stats(transform.forward(x).float(), with_qsur=qsur))

    @torch.no_grad()
    def finish(self) -> list[tuple[dict, dict, dict]]:
        """(raw, initial transform, trained transform) statistics per sampled transform."""
        self.stop()
        out = []
        for key, (x, raw, initial) in self.before.items():
            transform = self.rows[key][0]
            trained = activation_stats(transform.forward(x).float(), with_qsur=len(x) > x.shape[-1])
            out.append((raw, initial, trained))
        return out


@torch.no_grad()
def transform_effect(x: torch.Tensor, transform: nn.Module) -> tuple[dict, dict]:
    """Activation statistics of a sample ``x`` (tokens, n) before and after ``transform`` (x ↦ x·T)."""
    qsur = len(x) > x.shape[-1]  # a covariance needs more tokens than channels
    device = next(iter([*transform.buffers(), *transform.parameters()]), x).device
    after = transform(x.to(device)).float().cpu()
    return activation_stats(x, with_qsur=qsur), activation_stats(after, with_qsur=qsur)


def stats_line(header: str, effects: list[tuple[dict, ...]], unit: str | None = None) -> str | None:
    """``header: key a → b [→ c]; ...``: each statistic's mean over ``effects`` (tuples of statistics
    dicts, one per stage), skipping NaN entries (too few tokens for QSUR); with ``unit``, a statistic
    averaged over fewer entries than all says over how many."""
    parts = []
    for key in KEYS:
        rows = [e for e in effects if all(d[key] == d[key] for d in e)]
        if rows:
            means = [sum(r[i][key] for r in rows) / len(rows) for i in range(len(rows[0]))]
            partial = f" ({len(rows)} {unit})" if unit and len(rows) < len(effects) else ""
            parts.append(f"{key} " + " → ".join(f"{m:.3g}" for m in means) + partial)
    return f"{header}: " + "; ".join(parts) if parts else None


def effect_line(effects: list[tuple[dict, dict, dict]]) -> str | None:
    """One report line: each statistic's mean over the transforms, raw → initial → trained."""
    header = f"learnable transforms ({len(effects)}), input statistics raw → initial transform → trained"
    return stats_line(header, effects) if effects else None
