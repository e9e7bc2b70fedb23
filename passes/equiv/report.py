"""Per-scope reports of the input groups (``surgeon inspect --regions``) and their statistics (``--stats``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from surgeon.capture import Capture
from surgeon.passes.equiv.common import group_stats
from surgeon.passes.equiv.regions import InputGroup, Regions, find_regions
from surgeon.passes.equiv.stats import activation_stats


def regions_of(model: nn.Module, cap: Capture) -> Regions:
    """The model's regions, computed once per capture (every equivalent-transform pass asks for them)."""
    cached = cap.__dict__.get("_equiv_regions")
    if cached is None:
        cached = cap.__dict__["_equiv_regions"] = find_regions(model, cap)
    return cached


def regions_text(regions: Regions) -> str:
    """Input groups by the module holding their first reader, one line each."""
    lines = []
    for scope, groups in regions.by_scope().items():
        lines.append(f"{scope or '<model>'}")
        lines += [f"  {g.describe()}" for g in groups]
    folds = sum(g.foldable for g in regions.groups)
    lines.append(f"{len(regions.groups)} input groups: {folds} foldable into their producer, "
                 f"{len(regions.groups) - folds} online only")
    return "\n".join(lines)


@dataclass(frozen=True)
class GroupRow:
    """Statistics of one group's input: see :func:`surgeon.passes.equiv.stats.activation_stats`."""

    group: InputGroup
    tokens: int
    stats: dict[str, float]


def stats_rows(model: nn.Module, regions: Regions, batches: list) -> list[GroupRow]:
    """Activation statistics of every group's input over ``batches`` (QSUR when tokens > channels)."""
    rows = []
    for g, st in zip(regions.groups, group_stats(model, regions.groups, batches)):
        x = st.sample()
        rows.append(GroupRow(g, len(x), activation_stats(x, with_qsur=len(x) > x.shape[-1])))
    return rows
