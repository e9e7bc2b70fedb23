"""``kan``: replace matched MLPs by KAT/KAN structures with learnable univariate functions.

A site is an MLP found by :func:`surgeon.patterns.mlp_sites` (its path is the MLP scope: ``model.layers.0.mlp``;
BERT-style split MLPs are sited at their block). The record holds the MLP's module paths, widths and the
shape options; :func:`~surgeon.passes.kan.build.build` rebuilds the structure from it on load.
Each record also carries ``init_error``: the MLP's relative error on the init data before and after ``init``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from surgeon.passes.kan.build import build, mlp_forward
from surgeon.passes.kan.init import init_distill, init_fit, init_scratch

from surgeon.calibration import collect_inputs
from surgeon.errors import RecipeError
from surgeon.inputs import example_inputs
from surgeon.patterns import linear_view, mlp_sites
from surgeon.patterns.structure import norm_info
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import (
    Found,
    PassContext,
    PassHandler,
    Site,
    register_pass,
)


@dataclass(frozen=True, kw_only=True)
class KAN(PassConfig):
    """Options of ``kan``.

    ``basis`` rational | bspline; ``structure`` kat | kan; ``form`` residual (exact at init) | pure;
    ``init`` fit | distill | scratch; ``groups`` (channel groups of group activations and rationals);
    ``grid`` (B-spline intervals G) and ``order`` (k); ``grid_eps`` (uniform share of adapted grids);
    ``fit_samples`` (most samples per group in 1-D activation fits: the rare large pre-activations must be
    in the sample, 2k per group missed MiniLM's tails); ``samples`` (rows for distillation); ``steps``, ``lr``
    (distillation); ``seed``. Further bases: ``terms`` (Fourier G), ``degree``/``knots``/``knot_mode`` (TruKAN
    k, M and fixed | shared | individual knots; individual needs ``structure: kan``), ``reps``/
    ``preact_trainable``/``measure`` (DARUAN re-uploading layers, trainable encodings, true ⟨Z⟩ "expectation"
    or QKAN's "fast" |α| − |β|), ``candidates`` (S-KAN's bases for ``basis: selectable``), ``fit_weighting``
    (``down``: weight F2's fit per hidden channel by its down-projection column norm²; ``output``: then L-BFGS on
    F2's coefficients against the error after fc2, cross-channel terms included; ``norm``: ``output`` with each
    token's error weighted by 1/σ² of the residual stream at the next norm, i.e. by what it costs after that
    norm; ``kat`` structure),
    ``numerators`` (rationals: ``shared`` numerator across groups as in KAT, or one per ``group``).
    """

    pass_name = "kan"
    basis: Literal["rational", "bspline", "fourier", "trukan", "selectable", "daruan"] = "rational"
    structure: Literal["kat", "kan", "hqkan"] = "kat"
    form: Literal["residual", "pure"] = "residual"
    init: Literal["fit", "distill", "scratch"] = "fit"
    groups: int = 8
    grid: int = 5
    order: int = 3
    grid_eps: float = 0.02
    terms: int = 5
    degree: int = 3
    knots: int = 6
    knot_mode: Literal["fixed", "shared", "individual"] = "fixed"
    reps: int = 3
    preact_trainable: bool = True
    measure: Literal["expectation", "fast"] = "expectation"
    candidates: tuple[str, ...] = ("bspline", "fourier", "trukan")
    fit_weighting: Literal["uniform", "down", "output", "norm"] = "uniform"
    numerators: Literal["shared", "group"] = "shared"
    samples: int = 2048
    fit_samples: int = 16384
    steps: int = 200
    lr: float = 3e-3
    seed: int = 0

    def check(self) -> None:
        """Sizes positive, ``grid_eps`` in [0, 1], ``lr`` positive."""
        for name, low in (("groups", 1), ("grid", 1), ("order", 1), ("samples", 16), ("fit_samples", 16), ("steps", 0),
                          ("seed", 0), ("terms", 1), ("degree", 1), ("knots", 1), ("reps", 1)):
            if getattr(self, name) < low:
                raise RecipeError(f"option `{name}` of pass `kan` must be at least {low}, got {getattr(self, name)}",
                                  fix=f"Set `{name}` to {low} or more")
        if not 0 <= self.grid_eps <= 1:
            raise RecipeError(f"option `grid_eps` of pass `kan` must lie in [0, 1], got {self.grid_eps}",
                              fix="Set `grid_eps` between 0 (quantile grid) and 1 (uniform grid)")
        allowed = ("rational", "bspline", "fourier", "trukan", "daruan")
        if not self.candidates or any(c not in allowed for c in self.candidates) or \
                len(set(self.candidates)) != len(self.candidates):
            raise RecipeError(f"option `candidates` of pass `kan` must be distinct names from {allowed}, "
                              f"got {self.candidates}", fix="e.g. candidates: [bspline, fourier, trukan]")
        if self.knot_mode == "individual" and self.structure != "kan":
            raise RecipeError("option `knot_mode: individual` of pass `kan` needs `structure: kan` (an activation "
                              "has one function per group, so its knots are shared)", fix="Use knot_mode: shared")
        if self.fit_weighting != "uniform" and (self.structure != "kat" or self.form != "pure" or self.init == "scratch"):
            raise RecipeError("option `fit_weighting` of pass `kan` applies to the fitted F2 of `structure: kat, "
                              "form: pure` (init fit or distill)", fix="Leave fit_weighting: uniform here")
        if self.fit_weighting == "norm" and self.init != "fit":
            raise RecipeError("option `fit_weighting: norm` of pass `kan` needs `init: fit` (its token weights are "
                              "those of the recorded calibration rows)", fix="Set init: fit, or fit_weighting: output")
        if not self.lr > 0:
            raise RecipeError(f"option `lr` of pass `kan` must be positive, got {self.lr}", fix="Set `lr` > 0")


@register_pass(KAN)
class KANPass(PassHandler):
    """Replaces MLPs by KAT (F1 → fc1 → F2 → fc2) or two-layer KAN structures."""

    preserves = "approx"
    paper = ("KAT: Yang & Wang, 'Kolmogorov-Arnold Transformer' (ICLR 2025); KAN: Liu et al., "
             "'KAN: Kolmogorov-Arnold Networks' (ICLR 2025)")
    summary = ("Replace MLPs by KAT/KAN structures with rational, B-spline, Fourier, TruKAN, DARUAN (QKAN) or "
               "S-KAN selectable functions.")
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: KAN) -> Found:
        return Found([Site(s.path, s.path, data=s) for s in mlp_sites(ctx.capture)])

    def rewrite(self, ctx: PassContext, config: KAN, sites: list[Site]) -> bool:
        model = ctx.model
        records = [_plan(model, site.data, config) for site in sites]
        batches = ctx.calibration or [example_inputs(model)]
        data = _collect(model, records, batches, config)
        for site, record in zip(sites, records):
            site.record = record
            _rewrite_one(model, record, data[record["path"]], config)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        build(model, record)


def _plan(model, mlp, config: KAN) -> dict:
    up = linear_view(model.get_submodule(mlp.up))
    record = {"path": mlp.path, "kind": mlp.kind, "up": mlp.up, "gate": mlp.gate, "act": mlp.act,
              "down": mlp.down, "width": up.in_features, "hidden": up.out_features,
              "basis": config.basis, "structure": config.structure, "form": config.form,
              "groups": config.groups, "grid": config.grid, "order": config.order, "terms": config.terms,
              "degree": config.degree, "knots": config.knots, "knot_mode": config.knot_mode, "reps": config.reps,
              "preact_trainable": config.preact_trainable, "measure": config.measure,
              "candidates": list(config.candidates), "numerators": config.numerators}
    if mlp.act is None:
        raise RecipeError(f"pass `kan` needs the activation of {mlp.path} as a module; it is a function call",
                          fix="Target MLPs whose activation is a submodule")
    bases = {config.basis} | (set(config.candidates) if config.basis == "selectable" else set())
    uses_groups = "rational" in bases or config.structure == "kat"
    if config.structure == "hqkan" and "rational" in bases:
        k = math.ceil(math.log2(record["width"]))
        if k % config.groups:
            raise RecipeError(f"option `groups` of pass `kan` ({config.groups}) does not divide the HQKAN width {k} "
                              f"of {mlp.path}", fix="Set groups: 1 with structure hqkan and basis rational")
        uses_groups = False
    for width in (record["width"], record["hidden"]):
        if uses_groups and width % config.groups:
            raise RecipeError(f"option `groups` of pass `kan` ({config.groups}) does not divide the width {width} "
                              f"of {mlp.path}", fix="Choose `groups` dividing every MLP width (e.g. 1, 2, 4, 8)")
    return record


@torch.no_grad()
def _collect(model, records, batches, config: KAN) -> dict[str, dict[str, torch.Tensor]]:
    """Each site's MLP input ``x``, pre-activation ``pre`` and ``down`` input ``h``, as (N, C) float64 rows."""
    keys = [(rec["path"], key, rec[module]) for rec in records
            for key, module in (("x", "up"), ("pre", "act"), ("h", "down"))]
    norms = {}
    if config.fit_weighting == "norm":
        found = next_norms(model, [rec["down"] for rec in records], batches[0])
        norms = {rec["path"]: found[rec["down"]] for rec in records}
    keys += [(site, "res", path) for site, path in norms.items() if path is not None]
    inputs = collect_inputs(model, [path for _, _, path in keys], batches, dtype=torch.float64)
    rows = {(site, key): inputs[path] for site, key, path in keys}
    gen = torch.Generator().manual_seed(config.seed)
    out = {}
    for rec in records:
        site = {k: rows[(rec["path"], k)] for k in ("x", "pre", "h")}
        if norms.get(rec["path"]) is not None and len(rows[(rec["path"], "res")]) == len(site["pre"]):
            site["row_w"] = _inverse_power(model.get_submodule(norms[rec["path"]]), rows[(rec["path"], "res")])
        x = site["x"]
        if config.init == "distill":
            x = _distill_inputs(x, config, gen, calibrated=bool(batches) and len(batches) > 0)
        elif len(x) > config.samples:
            x = x[torch.randperm(len(x), generator=gen)[: config.samples]]
        site["distill_x"] = x
        out[rec["path"]] = site
    return out


@torch.no_grad()
def next_norms(model, downs: list[str], batch) -> dict[str, str | None]:
    """Per ``down`` path, the first norm module *called* after it in a forward of ``batch``: where the residual
    stream carrying that MLP's output is next normalised (BERT's output LayerNorm, the next block's input norm,
    the final norm); None if none. Call order, not module order: Llama registers its norms after the MLP."""
    from surgeon.runner import run_model

    norms = [p for p, m in model.named_modules() if norm_info(m) is not None]
    events: list[tuple[str, str]] = []
    handles = [model.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: events.append(("norm", p)))
               for p in norms]
    handles += [model.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: events.append(("down", p)))
                for p in downs]
    try:
        run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, str | None] = {}
    for i, (kind, path) in enumerate(events):
        if kind == "down" and path not in out:
            out[path] = next((p for k, p in events[i + 1:] if k == "norm"), None)
    return {d: out.get(d) for d in downs}


def _inverse_power(norm, rows: torch.Tensor) -> torch.Tensor:
    """1/σ² per row, σ² what ``norm`` divides by (variance for a layer norm, mean square for RMS)."""
    info = norm_info(norm)
    x = rows - rows.mean(-1, keepdim=True) if info.kind == "layer" else rows
    return 1.0 / (x.pow(2).mean(-1) + info.eps)


def _distill_inputs(x: torch.Tensor, config: KAN, gen: torch.Generator, calibrated: bool) -> torch.Tensor:
    """Recorded rows, topped up to ``samples`` rows drawn from their per-channel mean and std."""
    if len(x) >= config.samples:
        return x[torch.randperm(len(x), generator=gen)[: config.samples]]
    extra = torch.randn(config.samples - len(x), x.shape[1], generator=gen, dtype=x.dtype)
    return torch.cat([x, x.mean(0) + extra * x.std(0).clamp_min(1e-6)])


def _rewrite_one(model, record: dict, data: dict[str, torch.Tensor], config: KAN) -> None:
    ref = next(model.get_submodule(record["down"]).parameters())
    x = data["distill_x"].to(ref.device, ref.dtype)
    originals = {record[k]: model.get_submodule(record[k]) for k in ("gate", "up", "act", "down") if record[k]}
    with torch.no_grad():
        target = mlp_forward(model, record, x)
        if config.init == "distill":  # fit (and adapt grids) on the very rows distillation trains on
            data.update(_inner(originals, record, x))
    data["distill_x"], data["distill_y"] = x, target
    build(model, record)
    before = _relative(model, record, x, target)
    if config.init == "fit":
        init_fit(model, record, originals, data, config)
    elif config.init == "distill":
        init_distill(model, record, originals, data, config)
    else:
        init_scratch(model, record, originals, config)
    record["init_error"] = {"before": before, "after": _relative(model, record, x, target), "rows": len(x)}


def _inner(originals: dict, record: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The original MLP's pre-activation and ``down`` input for rows ``x``."""
    first = originals[record["gate"] or record["up"]]
    pre = first(x)
    h = originals[record["act"]](pre)
    if record["kind"] == "gated":
        h = h * originals[record["up"]](x)
    return {"x": x.double(), "pre": pre.double(), "h": h.double()}


@torch.no_grad()
def _relative(model, record, x, target) -> float:
    err = (mlp_forward(model, record, x) - target).double().norm() / target.double().norm().clamp_min(1e-30)
    return float(err)
