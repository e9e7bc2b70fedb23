"""QuaRot's residual-stream rotation, with the stream's writers and readers found by probing the blocks.

The residual stream h runs from the input embedding through every block (h ← h + branch(norm(h))) to the
final norm. Rotating it by an orthogonal Q (h ↦ h·Q) is exact when
- every norm reading the stream is an RMS norm whose gain has been folded into its readers (then
  RMSN(h·Q) = RMSN(h)·Q), and those readers are Linear-like: W ← W·Q;
- every *writer* (a Linear whose output is added to the stream: o_proj, down_proj) emits rotated
  outputs: W ← Qᵀ·W, b ← b·Q;
- the input embedding emits rotated rows: E ← E·Q (scalar embedding scales commute).
Writers are found per block scope without tables: a Linear whose output channels, scaled by s, change
the block output by exactly (s − 1)·(its output) writes to the stream additively. Stream norms are the
norms of ``norm_sites`` whose input equals the block input plus a prefix of its writers' outputs (or
the last block's output, for the final norm). The rewritten model is certified like every exact pass;
models where the rule does not hold (LayerNorm streams, sandwich norms) are refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surgeon.capture import Capture, join
from surgeon.passes.equiv.regions import first_tensor, record_io, token_rows, linear_paths
from surgeon.patterns import linear_view, norm_sites
from surgeon.patterns.structure import norm_info


@dataclass(frozen=True)
class ResidualPlan:
    """What a residual rotation touches: the embedding, the stream's writers, norms and their readers."""

    embedding: str
    writers: tuple[str, ...]
    norms: tuple[tuple[str, tuple[str, ...]], ...]  # (norm path, its Linear readers)
    width: int


def _blocks(model: nn.Module, cap: Capture) -> list[str]:
    """Paths of the repeated blocks (ModuleList entries that were captured with a recorded call)."""
    out = []
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            out += [join(path, str(i)) for i in range(len(module)) if join(path, str(i)) in cap.calls]
    return out


def residual_plan(model: nn.Module, cap: Capture) -> tuple[ResidualPlan | None, str]:
    """The plan, or (None, why the stream cannot be rotated)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embed, nn.Embedding):
        return None, "the model has no input embedding to rotate"
    blocks = _blocks(model, cap)
    if not blocks:
        return None, "no repeated blocks were found"
    width = embed.embedding_dim
    layer_norms = [p for p, m in model.named_modules() if norm_info(m) is not None and norm_info(m).kind == "layer"]
    if layer_norms:
        return None, (f"{layer_norms[0]} is a LayerNorm: mean-centring does not commute with a rotation "
                      "(QuaRot's OPT handling is not implemented)")
    sites = {s.path: s.readers for s in norm_sites(cap)[0]}
    writers, norms = [], []
    for block in blocks:
        found, stream_norms = _probe_stream(model, cap, block)
        writers += found
        norms += [(n, sites[n]) for n in stream_norms if n in sites]
        missing = [n for n in stream_norms if n not in sites]
        if missing:
            return None, f"{missing[0]} reads the residual stream but its output is not read only by Linears"
    final = _final_norms(model, cap, blocks[-1], sites)
    if not final:
        return None, "no norm with only Linear readers reads the last block's output"
    norms += final
    if not writers:
        return None, ("no Linear adds its output to the residual stream (each branch ends in a norm or a "
                      "non-Linear module, e.g. sandwich norms or a mixture-of-experts block)")
    return ResidualPlan(_path_of(model, embed), tuple(writers), tuple(norms), width), ""


def _path_of(model: nn.Module, module: nn.Module) -> str:
    return next(p for p, m in model.named_modules() if m is module)


def _probe_stream(model, cap, block_path: str) -> tuple[list[str], list[str]]:
    """(writers, norms reading the stream) of one block, by probing its recorded call."""
    block = model.get_submodule(block_path)
    call = cap.calls[block_path]
    members = [p[len(block_path) + 1:] for p in linear_paths(model) if p.startswith(block_path + ".")]
    norms = [p for p, m in block.named_modules() if p and norm_info(m) is not None]
    hidden = call.args[0] if call.args else call.kwargs.get("hidden_states")

    def run(hook=None, path=None):
        handle = block.get_submodule(path).register_forward_hook(hook) if hook else None
        try:
            with torch.no_grad():
                return first_tensor(block(*call.args, **call.kwargs))
        finally:
            if handle:
                handle.remove()

    base = run()
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def keep(path):
        def hook(module, args, out):
            outputs.setdefault(path, out.detach().clone())
            if path not in order:
                order.append(path)
        return hook

    handles = [block.get_submodule(p).register_forward_hook(keep(p)) for p in members]
    try:
        norm_inputs, _ = record_io(block, lambda: run(), norms)
    finally:
        for h in handles:
            h.remove()
    # The stream's values in this block: its input, each stream norm's input, its output. A writer is a
    # Linear whose output, added to the latest stream value, gives the next one (sequential blocks) or,
    # together with the other branch's writer, the output (parallel attention + MLP blocks).
    targets = {n: x for n, x in norm_inputs.items()}
    targets["<output>"] = base
    candidates = [p for p in order if outputs[p].shape == hidden.shape]
    stream, writers, stream_norms = hidden.detach().double(), [], []
    for n, x in targets.items():  # norms reading the block input itself
        if n != "<output>" and _equal(x, stream):
            stream_norms.append(n)
    for p in candidates:
        nxt = stream + outputs[p].double()
        hits = [n for n, x in targets.items() if _equal(x, nxt)]
        if hits:
            writers.append(p)
            stream_norms += [n for n in hits if n != "<output>"]
            stream = nxt
    if not _equal(base, stream):  # parallel branches: the output is the input plus two writers at once
        for i, a in enumerate(candidates):
            for b in candidates[i + 1:]:
                if a not in writers and b not in writers and _equal(base, stream + outputs[a].double() + outputs[b].double()):
                    writers += [a, b]
                    stream = base.double()
    if not _equal(base, stream):
        return [], []
    return [join(block_path, w) for w in writers], [join(block_path, n) for n in stream_norms]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = token_rows(a).double(), token_rows(b).double()
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max().clamp_min(1e-12)))


def _final_norms(model, cap, last_block: str, sites: dict) -> list[tuple[str, tuple[str, ...]]]:
    """Norms outside the blocks whose input equals the last block's output."""
    last = first_tensor(cap.calls[last_block].output)
    candidates = [p for p in sites if not any(p.startswith(b + ".") for b in _blocks(model, cap))]
    if not candidates:
        return []
    inputs, _ = record_io(model, _model_runner(model, cap), candidates)
    return [(p, sites[p]) for p, x in inputs.items() if x.shape == last.shape and torch.equal(x, last)]


def _model_runner(model, cap):
    from surgeon.runner import call_kwargs

    if torch.is_tensor(cap.inputs):
        return lambda: model(cap.inputs)
    kwargs = call_kwargs(model, cap.inputs)
    return lambda: model(**kwargs)


@torch.no_grad()
def rotate_residual(model: nn.Module, plan: ResidualPlan, q: torch.Tensor) -> dict:
    """Fold the stream norms, then rotate embedding, writers and norm readers by ``q`` (d × d, float64).

    Returns the replay record (the norm folds' structure)."""
    from surgeon.passes.norm.fold import fold_one
    from surgeon.rewrite import tie_groups, untie

    ties = tie_groups(model)
    folds = [fold_one(model, norm, readers, ties) for norm, readers in plan.norms]
    embed = model.get_submodule(plan.embedding)
    q = q.to(embed.weight.device)
    embed.weight.copy_((embed.weight.double() @ q).to(embed.weight.dtype))
    untied = []
    for path in plan.writers:
        if untie(model, path, groups=ties):
            untied.append(path)
        view = linear_view(model.get_submodule(path))
        w = view.weight().detach().double()
        view.set_weight((q.T @ w).to(view.weight().dtype))
        if view.bias() is not None:
            view.set_bias((view.bias().detach().double() @ q).to(view.bias().dtype))
    for _, readers in plan.norms:
        for path in readers:
            view = linear_view(model.get_submodule(path))
            w = view.weight().detach().double()
            view.set_weight((w @ q).to(view.weight().dtype))
    return {"folds": folds, "untied": untied}


def replay_residual(model: nn.Module, record: dict) -> None:
    """Rebuild the structure of a residual rotation (weightless norms, untied writers) without data."""
    from surgeon.passes.norm.fold import replay_fold
    from surgeon.rewrite import untie

    for fold in record["folds"]:
        replay_fold(model, fold)
    for path in record["untied"]:
        untie(model, path)
