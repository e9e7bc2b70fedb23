"""Regions for equivalent transforms, found from the captured model without per-architecture tables.

An *input group* is the set of Linear-like modules that read one activation (norm → q, k, v; norm →
gate, up; v → o; act(gate)·up → down; anything → its lone reader). A transform T applied to that
activation (x ↦ x·T) is undone in every reader's weight (W ↦ W·T⁻ᵀ), so a group shares one T.

Each group also says who *produced* its activation, which decides whether a diagonal scale can be
folded offline (zero runtime cost) or must run online:
- ``norm``: the activation is a norm's output and only Linear-like modules read it (the foundation's
  ``norm_sites`` check, which looks into attention leaves); a scale folds into the norm's weight/bias;
- ``linear``: the activation is a Linear's output carried through ops that are linear per channel
  (reshapes, attention's probability-weighted sum over V, the product with act(gate)); a scale folds
  into that Linear's rows. ``channel_map[c]`` is the producer's output channel feeding input channel c
  (GQA repeats a KV head for several query heads).
- ``None``: anything else (a residual stream read by a post-norm block, an embedding): online only.

How they are found: one eager run of the model with hooks records every Linear-like input and norm
output; equal values mean one activation (so leaves that fx could not trace are seen too). For Linear
producers, each Linear of a captured block scope is probed by multiplying its output channels by
distinct signed factors s and watching the block's Linear inputs: a reader whose input changes exactly
by s[map[c]] per channel is reached linearly, and the compensated run (readers' inputs divided back)
must reproduce the block's output, which proves the fold. Signed factors reject ReLU-like ops, which
commute only with positive scales. Identical blocks are probed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils import _pytree as pytree

from surgeon.capture import Capture, join
from surgeon.capture.calls import record_calls
from surgeon.patterns import linear_view, norm_sites
from surgeon.patterns.structure import norm_info
from surgeon.runner import call_kwargs

FOLD_RTOL = 1e-5


@dataclass(frozen=True)
class InputGroup:
    """Linear-like modules (full paths) reading one activation of ``width`` channels, and its producer."""

    readers: tuple[str, ...]
    width: int
    producer: str | None = None
    producer_kind: str | None = None  # "norm" | "linear" | None
    channel_map: tuple[int, ...] | None = None  # linear producers: producer channel of each input channel
    shiftable: bool = False  # an additive per-channel shift also passes (attention's Σp = 1; not a gate)
    note: str = ""  # why the producer cannot take a fold (empty when it can, or there is none)

    @property
    def foldable(self) -> bool:
        """Whether a per-channel scale can be folded into the producer offline."""
        return self.producer_kind is not None

    def describe(self) -> str:
        """One line: the producer (or why there is none to fold into) → the readers."""
        shift = " (+shift)" if self.producer_kind == "linear" and self.shiftable else ""
        where = (f"{self.producer_kind} {self.producer}{shift}" if self.producer_kind else
                 f"online ({self.note})" if self.note else "online")
        return f"[{self.width}] {where} → {', '.join(self.readers)}"


@dataclass
class Regions:
    """Every input group of a model, in model order, and the Linear producers probed per block."""

    groups: list[InputGroup]
    edges: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # producer → reader → map
    shiftable: set[str] = field(default_factory=set)  # producers whose shift reaches the readers unchanged

    def group_of(self, reader: str) -> InputGroup | None:
        """The group that ``reader`` belongs to."""
        return next((g for g in self.groups if reader in g.readers), None)

    def by_scope(self) -> dict[str, list[InputGroup]]:
        """Groups keyed by the parent module path of their first reader (for per-scope reports)."""
        out: dict[str, list[InputGroup]] = {}
        for g in self.groups:
            out.setdefault(g.readers[0].rsplit(".", 1)[0] if "." in g.readers[0] else "", []).append(g)
        return out


def linear_paths(model: nn.Module) -> list[str]:
    """Paths of every Linear-like leaf module with a 2-D weight, in model order."""
    out = []
    for path, module in model.named_modules():
        if path and next(module.children(), None) is None and linear_view(module) is not None:
            out.append(path)
    return out


def record_io(model: nn.Module, run, paths: list[str], outputs: list[str] = ()) -> tuple[dict, dict]:
    """Run ``run()`` once (via :func:`~surgeon.capture.calls.record_calls`); the first input of each module
    in ``paths`` and the output of each in ``outputs``."""
    calls = record_calls([(p, model.get_submodule(p)) for p in dict.fromkeys([*paths, *outputs])], run)
    inputs = {p: calls[p].args[0] for p in paths
              if p in calls and calls[p].args and torch.is_tensor(calls[p].args[0])}
    outs = {p: calls[p].output for p in outputs if p in calls and torch.is_tensor(calls[p].output)}
    return inputs, outs


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., C) as (tokens, C)."""
    return x.reshape(-1, x.shape[-1])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape[-1] == b.shape[-1] and a.numel() == b.numel() and torch.equal(token_rows(a), token_rows(b))


def _groups_by_value(inputs: dict[str, torch.Tensor], order: list[str]) -> list[list[str]]:
    """Readers bucketed by equal input values (cheap key first, then an exact comparison)."""
    buckets: dict[tuple, list[list[str]]] = {}
    for path in order:
        if path not in inputs:
            continue
        x = inputs[path]
        key = (x.shape[-1], x.numel(), float(x.double().sum()))
        for group in buckets.setdefault(key, []):
            if _same(inputs[group[0]], x):
                group.append(path)
                break
        else:
            buckets[key].append([path])
    groups = [g for gs in buckets.values() for g in gs]
    return sorted(groups, key=lambda g: order.index(g[0]))


def find_regions(model: nn.Module, cap: Capture, *, probe_producers: bool = True) -> Regions:
    """Every input group of ``model`` with its producer (see the module docstring)."""
    order = linear_paths(model)
    norms = [p for p, m in model.named_modules() if p and norm_info(m) is not None]
    inputs, norm_out = record_io(model, _runner(model, cap.inputs), order, norms)
    foldable_norms = {s.path: set(s.readers) for s in norm_sites(cap)[0]}
    edges, shiftable = _linear_edges(model, cap, order) if probe_producers else ({}, set())
    groups = []
    for readers in _groups_by_value(inputs, order):
        width = inputs[readers[0]].shape[-1]
        groups.append(_classify(tuple(readers), width, inputs, norm_out, foldable_norms, edges, shiftable))
    return Regions(groups, edges, shiftable)


def _runner(model: nn.Module, batch):
    if torch.is_tensor(batch):
        return lambda: model(batch)
    kwargs = call_kwargs(model, batch)
    return lambda: model(**kwargs)


def _classify(readers, width, inputs, norm_out, foldable_norms, edges, shiftable) -> InputGroup:
    x = inputs[readers[0]]
    for norm, out in norm_out.items():
        if out.shape[-1] == width and _same(out, x):
            if norm in foldable_norms and set(readers) == foldable_norms[norm]:
                return InputGroup(readers, width, norm, "norm", shiftable=True)
            return InputGroup(readers, width, note=f"{norm}'s output is also read by other ops")
    for producer, targets in edges.items():
        if all(r in targets for r in readers):
            maps = {targets[r] for r in readers}
            if len(maps) == 1:
                return InputGroup(readers, width, producer, "linear", channel_map=maps.pop(),
                                  shiftable=producer in shiftable)
    return InputGroup(readers, width)


# ------------------------------------------------------------------------------ linear producer probes


def _block_root(path: str, cap: Capture) -> str | None:
    """The outermost non-model scope instance containing ``path`` (a decoder/encoder block)."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        candidate = ".".join(parts[:i])
        scope = cap.scope_at(candidate)
        if scope is not None and candidate in cap.calls and scope.kind != "model":
            return candidate
    return None


def _linear_edges(model: nn.Module, cap: Capture, order: list[str]) -> tuple[dict, set[str]]:
    """producer → {reader: channel map} for Linear outputs that reach readers linearly, per block, and the
    producers whose additive shift also reaches them unchanged."""
    blocks: dict[str, list[str]] = {}
    for path in order:
        root = _block_root(path, cap)
        if root is not None:
            blocks.setdefault(root, []).append(path)
    edges: dict[str, dict[str, tuple[int, ...]]] = {}
    shiftable: set[str] = set()
    probed: dict[str, tuple[dict, set]] = {}  # first instance → relative edges, shiftable producers
    for root, members in blocks.items():
        scope = cap.scope_at(root)
        first = scope.instances[0]
        if first not in probed:
            if first not in blocks:
                continue
            probed[first] = _probe_block(model, cap, first, blocks[first])
        found, shifts = probed[first]
        for producer, targets in found.items():
            edges[join(root, producer)] = {join(root, r): m for r, m in targets.items()}
        shiftable |= {join(root, p) for p in shifts}
    return edges, shiftable


def _probe_block(model, cap, root: str, members: list[str]) -> tuple[dict[str, dict[str, tuple[int, ...]]], set[str]]:
    block = model.get_submodule(root)
    call = cap.calls[root]
    rel = [m[len(root) + 1:] for m in members]

    def run(hooks=()):
        handles = [block.get_submodule(p).register_forward_hook(h) if kind == "out" else
                   block.get_submodule(p).register_forward_pre_hook(h) for kind, p, h in hooks]
        try:
            with torch.no_grad():
                return block(*call.args, **call.kwargs)
        finally:
            for h in handles:
                h.remove()

    base_inputs, _ = record_io(block, lambda: run(), rel)
    base_out = first_tensor(run())
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    shifts: set[str] = set()
    for producer in rel:
        out_features = linear_view(block.get_submodule(producer)).out_features
        s = _signed_factors(out_features, base_out.dtype, base_out.device)
        scaled_inputs, _ = record_io(block, lambda: run([("out", producer, _on_output(lambda o, s=s: o * s))]), rel)
        targets = {}
        for reader in rel:
            if reader == producer or reader not in scaled_inputs or reader not in base_inputs:
                continue
            cmap = _channel_map(base_inputs[reader], scaled_inputs[reader], s)
            if cmap is not None:
                targets[reader] = cmap
        if targets and _fold_holds(run, base_out, producer, s, targets):
            found[producer] = targets
            if _fold_holds(run, base_out, producer, s, targets, additive=True):
                shifts.add(producer)
    return found, shifts


def first_tensor(out):
    """The first tensor in a module's output (a block returns a tensor or a tuple starting with one)."""
    return next(t for t in pytree.tree_leaves(out) if torch.is_tensor(t))


def _signed_factors(n: int, dtype, device) -> torch.Tensor:
    """Distinct factors with random signs in ±[0.5, 2): each channel is identifiable by its factor."""
    gen = torch.Generator().manual_seed(n)
    mags = 0.5 + 1.5 * (torch.randperm(n, generator=gen).double() + 0.5) / n
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    return (mags * signs).to(dtype=dtype, device=device)


def _on_output(f):
    """A forward hook replacing a module's output by ``f(output)``."""
    return lambda module, args, out: f(out)


def _on_input(f):
    """A forward pre-hook replacing a module's first argument by ``f(argument)``."""
    return lambda module, args: (f(args[0]), *args[1:])


def _channel_map(before: torch.Tensor, after: torch.Tensor, s: torch.Tensor) -> tuple[int, ...] | None:
    """The producer channel behind each reader input channel when ``after`` = ``before`` · s[map] exactly."""
    b, a = token_rows(before).double(), token_rows(after).double()
    if b.shape != a.shape or torch.equal(a, b):
        return None
    live = b.abs() > 1e-6 * b.abs().max().clamp_min(1e-30)
    ratio = torch.where(live, a / torch.where(live, b, torch.ones_like(b)), torch.nan)
    per_channel = torch.nanmedian(ratio, dim=0).values
    if torch.isnan(per_channel).any():
        return None
    cmap = (per_channel[:, None] - s.double()[None, :]).abs().argmin(1)
    expected = b * s.double()[cmap]
    if not torch.allclose(a, expected, rtol=1e-4, atol=1e-6 * float(b.abs().max())):
        return None
    return tuple(int(i) for i in cmap)


def _fold_holds(run, base_out: torch.Tensor, producer: str, s: torch.Tensor, targets: dict,
                additive: bool = False) -> bool:
    """The producer's output scaled by s (or, ``additive``, shifted by s) and each reader's input
    compensated leaves the block output."""
    if additive:
        hooks = [("out", producer, _on_output(lambda o: o + s))]
        hooks += [("in", r, _on_input(lambda x, c=s[list(m)]: x - c)) for r, m in targets.items()]
    else:
        hooks = [("out", producer, _on_output(lambda o: o * s))]
        hooks += [("in", r, _on_input(lambda x, c=s[list(m)]: x / c)) for r, m in targets.items()]
    out = first_tensor(run(hooks))
    err = (out.double() - base_out.double()).norm() / base_out.double().norm().clamp_min(1e-30)
    return float(err) <= FOLD_RTOL
