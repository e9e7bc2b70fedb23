"""What the equivalent-transform passes share: finding input groups, statistics, wrapping, replay.

Each pass (``smooth``, ``rotate``, ``flat``, ``ost``) builds one :class:`~.layers.InputTransform` per input
group (see :mod:`.regions`) and either folds it offline (``smooth`` where the group's producer takes it)
or wraps the group's readers in :class:`~.layers.TransformedLinear` with T⁻ᵀ folded into their weights.
All of them preserve the model's function exactly (the manager certifies ≤ 1e-5 relative in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.inputs import example_inputs
from surgeon.passes.equiv.layers import (DenseTransform, InputTransform, KroneckerTransform, ScaleTransform,
                                          TransformedLinear)
from surgeon.passes.equiv.linalg import kron_factors, rotation
from surgeon.passes.equiv.regions import InputGroup
from surgeon.passes.equiv.effect import stats_line, transform_effect
from surgeon.passes.quant.fake_quant import _head_paths, excluded_by
from surgeon.passes.quant.layers import PackedLinear, QuantLinear
from surgeon.patterns import linear_view
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site
from surgeon.rewrite import set_submodule, tie_groups, untie
from surgeon.runner import call_kwargs

TRANSFORMS = {"scale": ScaleTransform, "dense": DenseTransform, "kron": KroneckerTransform}


class GroupStats:
    """Per-channel statistics of one group's input over the calibration batches, and a row sample."""

    MAX_ROWS = 4096

    def __init__(self):
        self.absmax: torch.Tensor | None = None
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of activations x (..., n)."""
        x = x.detach().reshape(-1, x.shape[-1]).double()
        lo, hi = x.amin(0), x.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.absmax = torch.maximum(self.lo.abs(), self.hi.abs())
        if self.count < self.MAX_ROWS:
            self.rows.append(x[: self.MAX_ROWS - self.count].float())
            self.count += min(len(x), self.MAX_ROWS - self.count)

    def sample(self) -> torch.Tensor:
        """Up to MAX_ROWS recorded rows (tokens × channels)."""
        return torch.cat(self.rows)


def group_stats(model: nn.Module, groups: list[InputGroup], batches: list) -> list[GroupStats]:
    """Statistics of each group's input (read at its first reader) over ``batches``."""
    stats = [GroupStats() for _ in groups]
    handles = []
    for g, st in zip(groups, stats):
        handles.append(model.get_submodule(g.readers[0]).register_forward_pre_hook(
            lambda m, args, st=st: st.update(args[0])))
    try:
        with torch.no_grad():
            for b in batches:
                model(**call_kwargs(model, b)) if isinstance(b, dict) else model(b)
    finally:
        for h in handles:
            h.remove()
    return stats


def kronecker_rotation(n: int, seed: int, *, learn_scale: bool = False) -> tuple[KroneckerTransform, dict] | None:
    """A fixed rotation Q1 ⊗ Q2 (n = n1·n2 nearest √n; each factor a random Hadamard where its order allows,
    else random orthogonal) as a :class:`KroneckerTransform`: O(n1² + n2²) memory and O(n(n1 + n2)) work per
    token, where a dense n × n rotation needs n² (485 MB in fp32 at d_ff = 11008). None when n is prime."""
    n1, n2 = kron_factors(n)
    if n1 == 1:
        return None
    t = KroneckerTransform(n1, n2, learn_scale=learn_scale)
    t.m1.copy_(rotation(n1, seed=seed)[0].float())
    t.m2.copy_(rotation(n2, seed=seed + 1)[0].float())
    return t, {"cls": "kron", "n1": n1, "n2": n2, "learnable": False, "learn_scale": learn_scale}


def reader_weights(model: nn.Module, readers: tuple[str, ...]) -> torch.Tensor:
    """The readers' weights stacked as (Σ out, n) in float64 (for weight statistics)."""
    return torch.cat([linear_view(model.get_submodule(r)).weight().detach().double() for r in readers])


def certified_scope(model: nn.Module, group: InputGroup) -> str:
    """Where a group's rewrite is exact on its own: the reader for an online transform; for a fold, the
    repeated block holding producer and readers (a smaller scope would be run on an input that another
    group's fold already rescaled)."""
    if not group.foldable:
        return group.readers[0]
    parts = [p.split(".") for p in (*group.readers, group.producer)]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    for i in range(1, len(common) + 1):
        parent = model.get_submodule(".".join(common[: i - 1]))
        if isinstance(parent, nn.ModuleList):
            return ".".join(common[:i])
    return ".".join(common)


class EquivPass(PassHandler):
    """Base handler: sites are input groups (a site's path is its first reader); exact by construction.

    Subclasses implement ``make_transform(ctx, config, group, stats, index)`` → (transform, spec dict) and may
    override ``eligible`` (a reason to skip a group) and ``rewrite_group`` (to fold instead of wrapping;
    it returns the replay record and the transform the activation now goes through, or None).
    """

    preserves = "exact"
    site_kind = "input group (path of its first Linear reader)"

    def requires(self, ctx: PassContext, config) -> None:
        quantised = [p for p, m in ctx.model.named_modules() if isinstance(m, (QuantLinear, PackedLinear))]
        if quantised:
            raise SurgeonError(
                f"pass `{self.name}` must run before `fake_quant`, but {quantised[0]} is already quantised",
                fix=f"Put the `{self.name}` step before `fake_quant` in the recipe")

    def eligible(self, model: nn.Module, config, group: InputGroup) -> str | None:
        """Why ``group`` cannot take this transform, or None."""
        return None

    def find(self, ctx: PassContext, config) -> Found:
        from surgeon.passes.equiv.report import regions_of

        regions = regions_of(ctx.model, ctx.capture)
        heads = _head_paths(ctx.model)
        sites, skipped = [], []
        for g in regions.groups:
            reason = None
            for r in g.readers:
                entry = excluded_by(ctx.model, r, ctx.model.get_submodule(r), config.exclude, heads)
                if entry:
                    reason = f"{r} is excluded by `exclude` entry {entry!r}"
                    break
            if any(_wrapped(ctx.model, r) for r in g.readers):
                reason = "already transformed by an earlier pass"
            reason = reason or self.eligible(ctx.model, config, g)
            if reason:
                skipped.append((g.readers[0], reason))
            else:
                sites.append(Site(g.readers[0], certified_scope(ctx.model, g), data=g))
        return Found(sites, skipped)

    def rewrite(self, ctx: PassContext, config, sites: list[Site]) -> bool:
        batches = ctx.calibration or [example_inputs(ctx.model)]
        groups = [s.data for s in sites]
        stats = group_stats(ctx.model, groups, batches)
        ties = tie_groups(ctx.model)
        effects = []
        for i, (site, group, st) in enumerate(zip(sites, groups, stats)):
            for r in group.readers:
                untie(ctx.model, r, groups=ties)
            site.record, applied = self.rewrite_group(ctx, config, group, st, i)
            if applied is not None:
                effects.append(transform_effect(st.sample(), applied))
        line = stats_line("group input statistics, mean over groups, before → after", effects, unit="groups")
        ctx.notes += self.notes(ctx, config, sites) + ([line] if line else [])
        return bool(sites)

    def notes(self, ctx: PassContext, config, sites: list[Site]) -> list[str]:
        """Report lines (counts of placements); subclasses add their own."""
        wrapped = sum(1 for s in sites if s.record.get("transform"))
        return [f"{len(sites)} input groups: {wrapped} online transforms, {len(sites) - wrapped} folded offline"]

    def rewrite_group(self, ctx: PassContext, config, group: InputGroup, stats: GroupStats,
                      index: int) -> tuple[dict, InputTransform | None]:
        """Build the group's transform and install it; returns (replay record, transform)."""
        transform, spec = self.make_transform(ctx, config, group, stats, index)
        return install(ctx.model, group, transform, spec), transform

    def make_transform(self, ctx, config, group: InputGroup, stats: GroupStats, index: int):
        """(transform with its fixed part set, JSON-able constructor spec) for one group."""
        raise NotImplementedError

    def replay(self, model: nn.Module, config, record: dict) -> None:
        spec = record.get("transform")
        for r in record.get("new_biases", []):
            view = linear_view(model.get_submodule(r))
            view.set_bias(torch.zeros(view.out_features, device=view.weight().device))
        if spec is None:
            return  # folded offline: nothing structural beyond new biases
        for r in record["readers"]:
            untie(model, r)
        kwargs = {k: v for k, v in spec.items() if k != "cls"}
        transform = TRANSFORMS[spec["cls"]](**kwargs)
        device = next(model.get_submodule(record["readers"][0]).parameters()).device
        wrap_readers(model, tuple(record["readers"]), transform.to(device))


def _wrapped(model: nn.Module, reader: str) -> bool:
    """Whether the Linear at ``reader`` is the ``linear`` of a :class:`TransformedLinear`."""
    parent = reader.rpartition(".")[0]
    return bool(parent) and isinstance(model.get_submodule(parent), TransformedLinear)


def install(model: nn.Module, group: InputGroup, transform: InputTransform, spec: dict) -> dict:
    """Move ``transform`` to the readers' device, fold T⁻ᵀ into them and wrap them; returns the replay record."""
    transform.to(linear_view(model.get_submodule(group.readers[0])).weight().device)
    fold_into_readers(model, group.readers, transform)
    wrap_readers(model, group.readers, transform)
    return {"readers": list(group.readers), "transform": spec}


@torch.no_grad()
def fold_into_readers(model: nn.Module, readers: tuple[str, ...], transform: InputTransform) -> None:
    """W ← W·T⁻ᵀ for every reader (computed in float64)."""
    for r in readers:
        view = linear_view(model.get_submodule(r))
        w = view.weight().detach()
        view.set_weight(transform.fold_fixed(w.double()).to(w.dtype))


def wrap_readers(model: nn.Module, readers: tuple[str, ...], transform: InputTransform) -> None:
    """Replace each reader by ``TransformedLinear(transform, reader)``, all sharing ``transform``."""
    for i, r in enumerate(readers):
        linear = model.get_submodule(r)
        set_submodule(model, r, TransformedLinear(transform, linear, shared_from="" if i == 0 else readers[0]))
