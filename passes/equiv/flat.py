"""``flat``: FlatQuant's learnable Kronecker affine transform before each Linear input group.

T = diag(1/s)·(P1 ⊗ P2) with n = n1·n2 and n1, n2 the factor pair nearest √n (FlatQuant's
get_decompose_dim); each P_i starts as a random orthogonal matrix (a random Hadamard when n_i has a
supported order) and is trained as P_i = M_i·C(A_i)·diag(e^{σ_i})·C(B_i)ᵀ: orthogonal × diagonal ×
orthogonal, so its inverse is exact without a matrix inversion. ``add_diag`` adds FlatQuant's per-channel
scale, initialised to max|X|^α / max|W|^(1−α) with α = ``alpha`` (0.3 in FlatQuant). Readers hold W·T⁻ᵀ;
``calibrate_quant`` trains the transforms together with LWC (weights) and LAC (``-lwc`` on per-token
activations) by block-wise reconstruction. Widths whose best pair is 1×n (primes) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import RecipeError
from surgeon.passes.equiv.common import EquivPass, reader_weights
from surgeon.passes.equiv.layers import KroneckerTransform
from surgeon.passes.equiv.linalg import kron_factors, rotation
from surgeon.passes.equiv.smooth import smoothing_scales
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import register_pass


@dataclass(frozen=True, kw_only=True)
class Flat(PassConfig):
    """Options of ``flat``: ``learnable`` factors, ``add_diag`` scale with ``alpha``, ``seed``, ``exclude``."""

    pass_name = "flat"
    learnable: bool = True
    add_diag: bool = True
    alpha: float = 0.3
    seed: int = 0
    exclude: tuple[str, ...] = ("embeddings", "head")

    def check(self) -> None:
        """``alpha`` in [0, 1]."""
        if not 0 <= self.alpha <= 1:
            raise RecipeError(f"option `alpha` of pass `flat` must be in [0, 1], got {self.alpha}", fix="Use 0.3")


@register_pass(Flat)
class FlatPass(EquivPass):
    """Inserts a Kronecker affine transform (learnable) before each Linear input group."""

    paper = "FlatQuant (Sun et al., ICML 2025)"
    summary = "Kronecker affine P1⊗P2 (+ diagonal) before each Linear input group, learnable, folded into W."

    def eligible(self, model, config: Flat, group) -> str | None:
        n1, _ = kron_factors(group.width)
        return f"width {group.width} has no factor pair (prime)" if n1 == 1 else None

    def make_transform(self, ctx, config: Flat, group, stats, index):
        n1, n2 = kron_factors(group.width)
        t = KroneckerTransform(n1, n2, learnable=config.learnable, learn_scale=config.learnable and config.add_diag)
        t.m1.copy_(rotation(n1, seed=config.seed + 2 * index)[0].float())
        t.m2.copy_(rotation(n2, seed=config.seed + 2 * index + 1)[0].float())
        if config.add_diag:
            w = reader_weights(ctx.model, group.readers)
            t.scale.copy_(smoothing_scales(stats.absmax.to(w.device), w.abs().amax(0), config.alpha).float())
        spec = {"cls": "kron", "n1": n1, "n2": n2, "learnable": config.learnable,
                "learn_scale": config.learnable and config.add_diag}
        return t, spec
