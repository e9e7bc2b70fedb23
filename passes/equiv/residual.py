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
the last block's output, for the final norm). The embeddings are those whose outputs sum (up to a constant
scale) to the first block's input: the token embedding and learned position embeddings. LayerNorm streams
(GPT-2, OPT, GPT-NeoX, Falcon, Phi, ...) are first made zero-mean, as QuaRot does for OPT: embedding rows
and writer outputs lose their channel mean, which no LayerNorm reader sees, and the LayerNorms, whose
inputs are then zero-mean, become RMS norms. The rewritten model is certified like every exact pass;
models where the rule does not hold (embedding norms, post-norm and sandwich-norm blocks, expert blocks)
are refused with the reason.
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
    """What a residual rotation touches: the embeddings, the stream's writers, norms and their readers.

    ``center``: some stream norm is a LayerNorm, so the stream is first made zero-mean (QuaRot's OPT
    handling): embedding rows and writer outputs lose their mean over channels, which no LayerNorm reader
    can see, and the LayerNorms, given zero-mean inputs, become RMS norms that commute with a rotation."""

    embeddings: tuple[str, ...]
    writers: tuple[str, ...]
    norms: tuple[tuple[str, tuple[str, ...]], ...]  # (norm path, its Linear readers)
    width: int
    center: bool = False


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
    embeddings = _stream_embeddings(model, cap, blocks, embed, width)
    if embeddings is None:
        return None, ("the first block's input is not the (scaled) sum of the model's embeddings: an embedding "
                      "norm (BLOOM) or a post-norm model (BERT), whose stream no rotation reaches unchanged")
    sites = {s.path: s.readers for s in norm_sites(cap)[0]}
    writers, norms = [], []
    for block in blocks:
        found, stream_norms = _probe_stream(model, cap, block)
        writers += found
        norms += [(n, sites[n]) for n in stream_norms if n in sites]
        missing = [n for n in stream_norms if n not in sites]
        if missing:
            return None, f"{missing[0]} reads the residual stream but its output is not read only by Linears"
    final = _final_norms(model, cap, blocks, sites)
    if not final:
        return None, "no norm with only Linear readers reads the last block's output"
    norms += final
    if not writers:
        return None, ("no Linear adds its output to the residual stream (each branch ends in a norm or a "
                      "non-Linear module, e.g. sandwich norms or a mixture-of-experts block)")
    center = any(norm_info(model.get_submodule(n)).kind == "layer" for n, _ in norms)
    return ResidualPlan(embeddings, tuple(writers), tuple(norms), width, center), ""


def _stream_embeddings(model, cap, blocks: list[str], embed: nn.Embedding, width: int) -> tuple[str, ...] | None:
    """The embeddings whose outputs, summed (and scaled by a constant, as Gemma does), are the first
    block's input: the input embedding, plus learned position embeddings (GPT-2, OPT) where present."""
    first = cap.calls[blocks[0]]
    hidden = first.args[0] if first.args else first.kwargs.get("hidden_states")
    candidates = [p for p, m in model.named_modules() if isinstance(m, nn.Embedding) and m.embedding_dim == width
                  and _outside(p, blocks)]
    _, outs = record_io(model, _model_runner(model, cap), [], candidates)
    main = _path_of(model, embed)
    for chosen in (candidates, [main]):
        if any(c not in outs for c in chosen):
            continue
        total = sum(outs[c].double().expand_as(hidden) for c in chosen)
        h = hidden.double()
        scale = float((h * total).sum() / (total * total).sum().clamp_min(1e-30))
        if torch.allclose(h, scale * total, rtol=1e-5, atol=1e-6 * float(h.abs().max())):
            return tuple(chosen)
    return None


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
    # Same values as the stream, possibly flattened to (tokens, d) (OPT's MLP works on flat rows).
    candidates = [p for p in order if outputs[p].shape[-1] == hidden.shape[-1] and outputs[p].numel() == hidden.numel()]
    outputs = {p: outputs[p].reshape(hidden.shape) for p in candidates}
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


def _outside(path: str, blocks: list[str]) -> bool:
    return not any(path.startswith(b + ".") for b in blocks)


def _final_norms(model, cap, blocks: list[str], sites: dict) -> list[tuple[str, tuple[str, ...]]]:
    """Norms outside the blocks whose input equals the last block's output."""
    last = first_tensor(cap.calls[blocks[-1]].output)
    candidates = [p for p in sites if _outside(p, blocks)]
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
    from surgeon.passes.norm.fold import fold_one, replay_fold
    from surgeon.rewrite import tie_groups, untie

    ties = tie_groups(model)
    folds = [fold_one(model, norm, readers, ties) for norm, readers in plan.norms]
    if plan.center:  # zero-mean stream: the weightless LayerNorms are RMS norms now
        for fold in folds:
            if fold["kind"] == "layer":
                fold["kind"] = "rms"
                replay_fold(model, {**fold, "untied": [], "bias_added": []})
    untied = []
    for path in plan.embeddings:
        if untie(model, path, groups=ties):
            untied.append(path)
        embed = model.get_submodule(path)
        e = embed.weight.double()
        if plan.center:
            e = e - e.mean(-1, keepdim=True)
        q = q.to(e.device)
        embed.weight.copy_((e @ q).to(embed.weight.dtype))
    for path in plan.writers:
        if untie(model, path, groups=ties):
            untied.append(path)
        view = linear_view(model.get_submodule(path))
        w = view.weight().detach().double()
        if plan.center:
            w = w - w.mean(0, keepdim=True)  # each output's mean over the d channels
        view.set_weight((q.T @ w).to(view.weight().dtype))
        if view.bias() is not None:
            b = view.bias().detach().double()
            if plan.center:
                b = b - b.mean()
            view.set_bias((b @ q).to(view.bias().dtype))
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
