"""``rotate``: QuaRot-style rotations of each Linear input group (online; SpinQuant's learnable option).

Each input group gets one orthogonal T: a randomised Hadamard when the width is m·2^k with m in
{1, 12, 20, 28, 40} (384 = 12·32 and 1536 = 12·128 need the order-12 factor), else a random orthogonal
matrix. Readers hold W·T (T⁻ᵀ = T), and the activation is rotated online before them, so quantizers
inserted later by ``fake_quant`` see rotated (outlier-spread) inputs. ``learnable: true`` adds a Cayley
delta that ``calibrate_quant`` trains (SpinQuant's R, here per group and block-wise rather than with the
end-to-end LM loss). Groups wider than ``dense_up_to`` (2048) take a Kronecker-structured rotation
Q1 ⊗ Q2 instead of a dense n × n matrix (see :func:`~.common.kronecker_rotation`), unless learnable.

``placement: residual`` is QuaRot proper for pre-norm RMSNorm models: the stream norms are folded and the
residual stream is rotated by one random Hadamard fused into the embedding, the stream's writers and the
norms' readers (see :mod:`.residual`); the groups the stream does not reach (o_proj's and down_proj's
inputs) are rotated online as above. Models whose stream cannot be rotated are refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from surgeon.errors import RecipeError
from surgeon.passes.equiv.common import EquivPass, kronecker_rotation
from surgeon.passes.equiv.layers import DenseTransform
from surgeon.passes.equiv.linalg import random_orthogonal, rotation
from surgeon.passes.equiv.residual import replay_residual, residual_plan, rotate_residual

RESIDUAL = "<residual stream>"
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, Site, register_pass


@dataclass(frozen=True, kw_only=True)
class Rotate(PassConfig):
    """Options of ``rotate``: rotation ``kind``, ``placement``, ``learnable`` (Cayley delta), ``seed``, ``exclude``."""

    pass_name = "rotate"
    kind: Literal["hadamard", "orthogonal"] = "hadamard"
    placement: Literal["online", "residual"] = "online"
    learnable: bool = False
    dense_up_to: int = 2048
    seed: int = 0
    exclude: tuple[str, ...] = ("embeddings", "head")

    def check(self) -> None:
        """``seed`` and ``dense_up_to`` are non-negative."""
        for name in ("seed", "dense_up_to"):
            if getattr(self, name) < 0:
                raise RecipeError(f"option `{name}` of pass `rotate` must be ≥ 0, got {getattr(self, name)}",
                                  fix="Use e.g. 0 for seed, 2048 for dense_up_to")


@register_pass(Rotate)
class RotatePass(EquivPass):
    """Rotates each Linear input group by a random Hadamard (or orthogonal) matrix, folded into the readers."""

    paper = "QuaRot (Ashkboos et al., NeurIPS 2024); SpinQuant (Liu et al., ICLR 2025) for the learnable option"
    summary = "Rotate each Linear input group (random Hadamard incl. 12/20/28/40 orders; learnable Cayley option)."

    def find(self, ctx, config: Rotate) -> Found:
        found = super().find(ctx, config)
        if config.placement == "online":
            return found
        plan, why = residual_plan(ctx.model, ctx.capture)
        if plan is None:
            return Found([], [(RESIDUAL, why)] + found.skipped)
        on_stream = {r for _, readers in plan.norms for r in readers}
        # A writer's output is rotated by design, so only the model's output certifies each online group.
        online = [Site(s.path, "", data=s.data) for s in found.sites if not on_stream & set(s.data.readers)]
        return Found([Site(RESIDUAL, "", data=plan)] + online, found.skipped)

    def rewrite(self, ctx, config: Rotate, sites):
        self._kinds = {}
        residual = [s for s in sites if s.path == RESIDUAL]
        for site in residual:
            q = self._rotation(config, site.data.width, seed=config.seed + 10_000)
            site.record = {"residual": True, **rotate_residual(ctx.model, site.data, q)}
        groups = [s for s in sites if s.path != RESIDUAL]
        if groups:
            super().rewrite(ctx, config, groups)
        ctx.notes += self._residual_notes(residual)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        if record.get("residual"):
            replay_residual(model, record)
        else:
            super().replay(model, config, record)

    def _residual_notes(self, residual) -> list[str]:
        if not residual:
            return []
        plan = residual[0].data
        centred = ", centred (LayerNorms became RMS norms)" if plan.center else ""
        return [f"residual stream ({plan.width}) rotated{centred}: embeddings {', '.join(plan.embeddings)}, "
                f"{len(plan.writers)} writers, {len(plan.norms)} norms folded with their readers"]

    def _rotation(self, config: Rotate, n: int, seed: int):
        if config.kind == "hadamard":
            q, kind = rotation(n, seed=seed)
        else:
            q, kind = random_orthogonal(n, seed=seed), "orthogonal"
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        return q

    def make_transform(self, ctx, config: Rotate, group, stats, index):
        n = group.width
        if n > config.dense_up_to and not config.learnable:
            structured = kronecker_rotation(n, seed=config.seed + 2 * index)
            if structured is not None:
                self._kinds["kronecker"] = self._kinds.get("kronecker", 0) + 1
                return structured
        q = self._rotation(config, n, seed=config.seed + index)
        t = DenseTransform(n, learn_rotation=config.learnable)
        t.matrix.copy_(q.float())
        return t, {"cls": "dense", "n": n, "learn_rotation": config.learnable}

    def notes(self, ctx, config, sites):
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(self._kinds.items()))
        return [f"{len(sites)} input groups rotated online ({kinds})"]
