"""``kan_refine``: grid extension, QKAN reps extension and S-KAN collapse on modules built by ``kan``.

Sites are the modules themselves (path = module path, certified as their own scope): B-spline activations
and KAN layers for ``grid``, DARUAN activations and QKAN layers for ``reps``, selectable mixtures for
``collapse``. Records hold the path and the new size (or the kept candidate), which is all replay needs;
collapse records also carry ``collapse_error`` (relative error to the mixture of the plain drop and of the refit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgeon.calibration import collect_inputs
from surgeon.errors import RecipeError
from surgeon.inputs import example_inputs
from surgeon.passes.kan.extra_layers import GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.layers import BSplineKANLinear, GroupBSpline
from surgeon.passes.kan.refine import collapse_refit, refine_grid, refine_reps, resize_grid, resize_reps
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass


@dataclass(frozen=True, kw_only=True)
class KANRefine(PassConfig):
    """Options of ``kan_refine``: ``grid`` (new B-spline interval count, 0 = keep), ``reps`` (new DARUAN
    re-uploading count, 0 = keep; must exceed the current one), ``collapse`` (S-KAN: keep each selectable
    mixture's strongest candidate, refitted to the whole mixture on its recorded inputs), ``refit_rows`` (most
    input rows per mixture for that refit), ``refit_iters`` (its L-BFGS iterations; 0 = plain drop). At least one
    of grid, reps, collapse must be set."""

    pass_name = "kan_refine"
    grid: int = 0
    reps: int = 0
    collapse: bool = False
    refit_rows: int = 4096
    refit_iters: int = 150

    def check(self) -> None:
        """Sizes non-negative; something to do."""
        for name in ("grid", "reps", "refit_iters"):
            if getattr(self, name) < 0:
                raise RecipeError(f"option `{name}` of pass `kan_refine` must be 0 or positive, got "
                                  f"{getattr(self, name)}", fix=f"Set `{name}` to 0 or more")
        if self.refit_rows < 16:
            raise RecipeError(f"option `refit_rows` of pass `kan_refine` must be at least 16, got {self.refit_rows}",
                              fix="Use e.g. 4096")
        if not (self.grid or self.reps or self.collapse):
            raise RecipeError("pass `kan_refine` has nothing to do: set option `grid`, `reps` or `collapse`",
                              fix="e.g. grid: 10")


@register_pass(KANRefine)
class KANRefinePass(PassHandler):
    """Refines KAN modules in place: finer grids, more QKAN reps, S-KAN collapse."""

    preserves = "approx"
    paper = ("KAN grid extension (Liu et al. 2025); QKAN layer extension (arXiv 2509.14026); "
             "S-KAN (arXiv 2408.08338)")
    summary = ("Extend B-spline grids and QKAN reps (function-preserving) or collapse S-KAN mixtures (refitting the "
               "kept candidate to the mixture).")
    site_kind = "KAN module"

    def find(self, ctx: PassContext, config: KANRefine) -> Found:
        found = Found()
        for path, module in ctx.model.named_modules():
            if config.grid and isinstance(module, (GroupBSpline, BSplineKANLinear)):
                if module.grid == config.grid:
                    found.skipped.append((path, f"grid is already {config.grid}"))
                else:
                    found.sites.append(Site(path, path, data="grid"))
            if config.reps and isinstance(module, (GroupDaruan, QKANLinear)):
                if module.reps >= config.reps:
                    found.skipped.append((path, f"reps {module.reps} ≥ {config.reps}: extension only adds layers"))
                else:
                    found.sites.append(Site(path, path, data="reps"))
            if config.collapse and isinstance(module, Selectable):
                if len(module.candidates) == 1:
                    found.skipped.append((path, "already collapsed"))
                else:
                    found.sites.append(Site(path, path, data="collapse"))
        return found

    def rewrite(self, ctx: PassContext, config: KANRefine, sites: list[Site]) -> bool:
        collapsing = [s.path for s in sites if s.data == "collapse"]
        rows = {}
        if collapsing and config.refit_iters:  # every mixture's inputs, recorded before any of them changes
            rows = collect_inputs(ctx.model, collapsing, ctx.calibration or [example_inputs(ctx.model)],
                                  max_rows=config.refit_rows, dtype=torch.float64)
        for site in sites:
            module = ctx.model.get_submodule(site.path)
            if site.data == "grid":
                refine_grid(module, config.grid)
                site.record = {"path": site.path, "kind": "grid", "grid": config.grid}
            elif site.data == "reps":
                refine_reps(module, config.reps)
                site.record = {"path": site.path, "kind": "reps", "reps": config.reps}
            else:
                keep = int(module.strengths().argmax())
                note = (f"{site.path}: kept {module.names[keep]} "
                        f"(mean |mix| {[round(float(v), 4) for v in module.strengths()]})")
                site.record = {"path": site.path, "kind": "collapse", "keep": keep}
                if site.path in rows:
                    drop, refit = collapse_refit(module, keep, rows[site.path], config.refit_iters)
                    note += (f"; error vs the mixture on {len(rows[site.path])} rows: plain drop {drop:.3e}, "
                             f"refit {refit:.3e}")
                    site.record["collapse_error"] = {"drop": drop, "refit": refit, "rows": len(rows[site.path])}
                else:
                    module.prune(keep)
                ctx.notes.append(note)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        module = model.get_submodule(record["path"])
        if record["kind"] == "grid":
            resize_grid(module, record["grid"])
        elif record["kind"] == "reps":
            resize_reps(module, record["reps"])
        else:
            module.prune(record["keep"])
