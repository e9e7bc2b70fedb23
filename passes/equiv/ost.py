"""``ost``: OSTQuant's learnable orthogonal + scaling transform before each Linear input group.

T = diag(1/s₀)·R₀·diag(e^{−θ})·C(A): a SmoothQuant-style scale s₀ (α = ``alpha``), a random Hadamard R₀
(random orthogonal when the width has no Hadamard order), then a learnable diagonal and a learnable
Cayley rotation; readers hold W·T⁻ᵀ and ``calibrate_quant`` trains θ and A with the quantizers. Groups wider
than ``dense_up_to`` (2048) keep a fixed Kronecker-structured rotation (as OSTQuant keeps a fixed Hadamard
before down_proj) with the initial and learnable scale: a dense learnable rotation there would need n²
parameters per group. Like every equivalent-transform pass, the report gives the group inputs' QSUR (OSTQuant's quantization space
utilization rate, per dimension), kurtosis and max/mean before and after the initial transform. Differences from the paper: transforms are per
Linear input group and applied online (the paper fuses a global residual rotation and per-block scales
into weights); the KL-Top loss needs a model with logits and is not used by block-wise calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.errors import RecipeError
from surgeon.passes.equiv.common import EquivPass, kronecker_rotation, reader_weights
from surgeon.passes.equiv.layers import DenseTransform
from surgeon.passes.equiv.linalg import rotation
from surgeon.passes.equiv.smooth import smoothing_scales
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import register_pass


@dataclass(frozen=True, kw_only=True)
class Ost(PassConfig):
    """Options of ``ost``: initial scale strength ``alpha`` (0 = none), ``seed``, ``exclude``."""

    pass_name = "ost"
    alpha: float = 0.5
    dense_up_to: int = 2048
    seed: int = 0
    exclude: tuple[str, ...] = ("embeddings", "head")

    def check(self) -> None:
        """``alpha`` in [0, 1]; ``dense_up_to`` ≥ 0."""
        if not 0 <= self.alpha <= 1:
            raise RecipeError(f"option `alpha` of pass `ost` must be in [0, 1], got {self.alpha}", fix="Use 0.5")
        if self.dense_up_to < 0:
            raise RecipeError(f"option `dense_up_to` of pass `ost` must be ≥ 0, got {self.dense_up_to}", fix="Use 2048")


@register_pass(Ost)
class OstPass(EquivPass):
    """Inserts a learnable orthogonal + scaling transform before each Linear input group, with QSUR."""

    paper = "OSTQuant (Hu et al., ICLR 2025)"
    summary = "Learnable orthogonal + scaling transform per Linear input group (OSTQuant)."

    def make_transform(self, ctx, config: Ost, group, stats, index):
        n = group.width
        s = torch.ones(n, dtype=torch.float64)
        if config.alpha > 0:
            w = reader_weights(ctx.model, group.readers)
            s = smoothing_scales(stats.absmax.to(w.device), w.abs().amax(0), config.alpha).cpu()
        if n > config.dense_up_to:
            structured = kronecker_rotation(n, seed=config.seed + 2 * index, learn_scale=True)
            if structured is not None:  # fixed Kronecker rotation, learnable scale (OSTQuant's R4 is fixed)
                structured[0].scale.copy_(s.float())
                return structured
        r, _ = rotation(n, seed=config.seed + index)
        matrix = (r / s[:, None]).float()  # diag(1/s₀)·R₀
        t = DenseTransform(n, learn_scale=True, learn_rotation=True)
        t.matrix.copy_(matrix)
        return t, {"cls": "dense", "n": n, "learn_scale": True, "learn_rotation": True}
