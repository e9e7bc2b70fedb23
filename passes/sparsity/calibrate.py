"""Shared helpers of the activation passes: where they act, and what the inputs there look like.

:func:`block_linears` lists the Linear-like modules inside the model's MLP blocks (attention projections
and MLP projections; output heads and poolers stay out). :func:`collect_inputs` runs the calibration
batches and keeps, per module, a sample of the rows its input had. :func:`quantile` is the threshold
that zeroes a given share of a score.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgeon.calibration import collect_inputs as core_collect_inputs
from surgeon.inputs import example_inputs
from surgeon.patterns import linear_view, mlp_sites


def calibration_batches(ctx) -> list[Any]:
    """The step's calibration batches, or one example batch when the recipe gave none."""
    return list(ctx.calibration) if ctx.calibration else [example_inputs(ctx.model)]


def block_of(site) -> str:
    """The transformer block holding an MLP site (a split MLP is sited at its block already)."""
    return site.path if site.kind == "split" else site.path.rpartition(".")[0]


def block_linears(ctx, wrapper_types: tuple[type, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """Linear-like module paths inside MLP blocks, and (path, reason) for the Linear-likes left out.

    A Linear already wrapped by one of ``wrapper_types`` (its parent) is left out: sparsifying the same
    input twice would compound two masks calibrated on different distributions.
    """
    blocks = sorted({block_of(s) for s in mlp_sites(ctx.capture)} | set(_list_elements(ctx.model)))
    sites, skipped = [], []
    modules = dict(ctx.model.named_modules())
    for path, module in modules.items():
        if not path or linear_view(module) is None:
            continue
        parent = modules.get(path.rpartition(".")[0])
        if not any(path.startswith(b + ".") for b in blocks):
            skipped.append((path, "outside the model's MLP blocks (head, pooler or embedding projection)"))
        elif isinstance(parent, wrapper_types):
            skipped.append((path, f"its input is already sparsified by {type(parent).__name__}"))
        else:
            sites.append(path)
    return sites, skipped


def _list_elements(model: nn.Module) -> list[str]:
    """Paths of the elements of the outermost ``nn.ModuleList``s: the repeated blocks of a transformer.

    MLP sites alone are not enough once an earlier pass wrapped an MLP's Linear (the MLP pattern no
    longer matches), so the blocks are also taken from the module lists that hold them.
    """
    found = []
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(path.startswith(f + ".") for f in found):
            found += [f"{path}.{name}" if path else name for name, _ in module.named_children()]
    return found


def collect_inputs(model: nn.Module, paths: list[str], batches: list[Any], *, max_rows: int = 4096,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Per module path, up to ``max_rows`` rows (tokens) of its first input over ``batches`` (float32, CPU)."""
    return core_collect_inputs(model, paths, batches, max_rows=max_rows, seed=seed)


def quantile(scores: torch.Tensor, share: float) -> float:
    """The value below which (about) ``share`` of ``scores`` lie: masking ``score <= t`` zeroes that share."""
    flat = scores.flatten().double()
    k = int(round(share * flat.numel()))
    if k <= 0:
        return float(flat.min()) - 1.0  # below every score: nothing is masked
    return float(torch.kthvalue(flat, min(k, flat.numel())).values)
