"""``lower``: replace layers that surgeon's passes created by thin modules calling ``surgeon::`` ops.

Driven by :data:`~.table.ROWS`. The replacements share the original parameters and buffers (same
objects, same names), so training, saving and loading are unchanged; replay rebuilds them from
``{"op", "path"}`` records. On the CPU the ops run their torch references, which compute what the
layers compute (see docs/passes/lower.md for the one rounding caveat), hence ``exact``.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import RecipeError
from surgeon.passes.lower.table import ROWS, row_named
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import set_submodule


@dataclass(frozen=True, kw_only=True)
class Lower(PassConfig):
    """Options of ``lower``: ``ops``, the table rows to apply (default: all)."""

    pass_name = "lower"
    ops: tuple[str, ...] = ("group_rational", "bspline_basis", "fake_quant", "kron_quant")

    def check(self) -> None:
        """Every name in ``ops`` is a table row, and there is at least one."""
        known = [r.name for r in ROWS]
        unknown = [o for o in self.ops if o not in known]
        if unknown or not self.ops:
            raise RecipeError(f"option `ops` of pass `lower` must name rows of {known}, got {list(self.ops)}",
                              fix=f"Use a subset of {known}")


@register_pass(Lower)
class LowerPass(PassHandler):
    """Swaps GroupRational, B-spline KAN layers, integer quantizers and FlatQuant layers for modules calling
    surgeon::group_rational / bspline_basis / fake_quant / kron_quant."""

    preserves = "exact"
    paper = "KAT (Yang & Wang, ICLR 2025) group-rational kernels; LSQ / OmniQuant fake quantisation"
    summary = "Lower layers created by kan / fake_quant to surgeon:: Triton ops (torch references on CPU)."
    site_kind = "GroupRational, B-spline KAN layer, Quantizer or FlatQuant layer"

    def find(self, ctx: PassContext, config: Lower) -> Found:
        rows = [row_named(name) for name in config.ops]
        sites, skipped = [], []
        fused: dict[str, str] = {}  # input quantizers a kron_quant site computes, → that site
        for path, module in ctx.model.named_modules():
            if path in fused:
                skipped.append((path, f"computed by the surgeon::kron_quant of {fused[path]}"))
                continue
            for row in rows:
                if isinstance(module, row.kinds):
                    if row.check(module):
                        sites.append(Site(path, path, data=row.name))
                        if row.name == "kron_quant":
                            fused[f"{path}.linear.input_quant"] = path
                    else:
                        skipped.append((path, row.reason(module)))
                    break
        return Found(sites, skipped)

    def rewrite(self, ctx: PassContext, config: Lower, sites: list[Site]) -> bool:
        for site in sites:
            site.record = {"op": site.data, "path": site.path}
            self.replay(ctx.model, config, site.record)
        return bool(sites)

    def replay(self, model, config: Lower, record: dict) -> None:
        old = model.get_submodule(record["path"])
        set_submodule(model, record["path"], row_named(record["op"]).build(old))
