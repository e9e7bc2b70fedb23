"""The pass manager: runs recipe steps as ``requires → find → select → rewrite → ensures → lint → certify``."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from surgeon.capture import capture
from surgeon.errors import CertificationError, MatchError, RecipeError, SurgeonError
from surgeon.pipeline.certify import EXACT_RTOL, Snapshot
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.recipe import Recipe, as_recipe, step_to_dict
from surgeon.pipeline.registry import Found, PassContext, Site, handler_for
from surgeon.pipeline.report import PassReport
from surgeon.pipeline.targets import check_target, target_matches

HISTORY_ATTR = "surgeon_history"
MAX_REASONS = 4


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def apply(
    model: nn.Module,
    steps: Recipe | PassConfig | Iterable[PassConfig] | str,
    calibration: Iterable[Any] | None = None,
    *,
    inputs: Mapping[str, Any] | torch.Tensor | None = None,
    certify: bool = True,
    on_step: Callable[[PassReport], None] | None = None,
) -> nn.Module:
    """Apply a recipe (or pass configs) to ``model`` in place and return it.

    ``calibration`` is a list of batches for passes that calibrate; its first batch (else ``inputs``, else
    :func:`surgeon.example_inputs`) is the sample batch on which every pass is certified. Each step's
    :class:`PassReport` is appended to the model's history (see :func:`report`) and passed to
    ``on_step`` when given (the CLI prints progress with it).
    """
    recipe = as_recipe(steps)
    calibration = list(calibration) if calibration is not None else None
    sample = inputs if inputs is not None else (calibration[0] if calibration else None)
    if sample is None:
        from surgeon.inputs import example_inputs

        sample = example_inputs(model)
    history: list[PassReport] = getattr(model, HISTORY_ATTR, None) or []
    ctx = PassContext(model, lambda m, previous: capture(m, sample, previous=previous), calibration)
    for index, config in enumerate(recipe):
        ctx.history = tuple(r.name for r in history)
        history.append(run_step(ctx, len(history), config, sample, certify=certify))
        setattr(model, HISTORY_ATTR, history)
        if on_step is not None:
            on_step(history[-1])
    return model


def report(model: nn.Module) -> list[PassReport]:
    """The reports of every pass applied to ``model`` so far, in order."""
    return list(getattr(model, HISTORY_ATTR, None) or [])


def _where(index: int, config: PassConfig, history: tuple[str, ...]) -> str:
    before = f" (after {', '.join(history)})" if history else ""
    return f"step {index}, pass `{config.pass_name}`{before}"


def run_step(ctx: PassContext, index: int, config: PassConfig, sample, *, certify: bool = True) -> PassReport:
    """Run one step on ``ctx.model``; raise a SurgeonError naming the step when it cannot."""
    handler = handler_for(config)
    where = _where(index, config, ctx.history)
    problem = check_target(config.target)
    if problem:
        raise RecipeError(problem, where=where, fix="Fix the `target` of this step")
    start = time.perf_counter()
    rep = PassReport(index, handler.name, config.target, handler.preserves, config=step_to_dict(config))
    rep.params_before = parameter_count(ctx.model)
    handler.requires(ctx, config)
    found: Found = handler.find(ctx, config)
    selected, outside = _select(ctx.model, config.target, found.sites)
    rep.skipped = [(p, r) for p, r in found.skipped if target_matches(config.target, p, _module_or_none(ctx.model, p))]
    rep.outside_target = outside
    rep.matched = [s.path for s in selected]
    _check_counts(config, handler, selected, rep.skipped, found, where)
    failures_before = set(ctx.capture.failures())
    snapshot = Snapshot(ctx.model, sample, [s.scope for s in selected]) if certify else None
    ctx.notes = []
    rep.changed = bool(handler.rewrite(ctx, config, selected))
    rep.notes += ctx.notes
    rep.records = [getattr(s, "record", None) for s in selected if getattr(s, "record", None) is not None]
    ctx.invalidate()
    handler.ensures(ctx, config, selected)
    _lint(ctx, rep, where, failures_before)
    if snapshot is not None:
        rep.certificates = snapshot.compare(ctx.model)
        if handler.preserves == "exact" and not rep.worst_error <= EXACT_RTOL:
            worst = max(rep.certificates, key=lambda c: c.relative_error)
            raise CertificationError(
                f"declares `exact` but changed {worst.scope} by relative error {worst.relative_error:.2e} "
                f"(limit {EXACT_RTOL:g} in fp32)", where=where,
                fix="This is a bug in the pass or an unsupported module; report it with the recipe and model",
            )
    rep.params_after = parameter_count(ctx.model)
    rep.seconds = time.perf_counter() - start
    return rep


def _module_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _select(model: nn.Module, target: str, sites: list[Site]) -> tuple[list[Site], int]:
    """Sites the target selects, in module order (reports read in the model's own order)."""
    selected = [s for s in sites if target_matches(target, s.path, _module_or_none(model, s.path))]
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    selected.sort(key=lambda s: order.get(s.path, len(order)))
    return selected, len(sites) - len(selected)


def _check_counts(config, handler, selected, skipped, found, where) -> None:
    if not selected:
        reasons = skipped or found.skipped
        detail = ""
        if reasons:
            shown = "; ".join(f"{p}: {r}" for p, r in reasons[:MAX_REASONS])
            more = f" (and {len(reasons) - MAX_REASONS} more)" if len(reasons) > MAX_REASONS else ""
            detail = f"; skipped sites: {shown}{more}"
        available = [s.path for s in found.sites][:MAX_REASONS]
        fix = (f"Change `target` ({config.target!r}); {handler.site_kind} paths this pass can act on include "
               f"{', '.join(available)}" if available else "Check that the model has what this pass rewrites")
        raise MatchError(f"matched no {handler.site_kind} for target {config.target!r}{detail}",
                         where=where, fix=fix)
    expected = config.expected_range()
    if expected is not None:
        low, high = expected
        n = len(selected)
        if n < low or (high is not None and n > high):
            raise MatchError(f"expected {config.expect} matches for target {config.target!r} but found {n}",
                             where=where, fix="Fix `target` or `expect` so they agree")


def _lint(ctx: PassContext, rep: PassReport, where: str, failures_before: set) -> None:
    """Re-capture the rewritten model and check every graph's invariants (fx ``lint``)."""
    try:
        cap = ctx.capture
    except SurgeonError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SurgeonError(f"the rewritten model can no longer be captured: {exc}", where=where,
                           fix="This is a bug in the pass; report it") from exc
    for scope in cap.scopes.values():
        if scope.graph is not None:
            scope.graph.lint()
    new_failures = [f"{p}: {r}" for p, r in cap.failures() if (p, r) not in failures_before]
    rep.notes += [f"no longer captured after the pass: {f}" for f in new_failures]
