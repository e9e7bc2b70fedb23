"""``karat``: replace softmax in attention by Fourier-KArAt's learnable low-rank operator (METHODS.md A.3).

Sites are the modules whose forward calls softmax (``surgeon.patterns.softmax_sites``: ViT's and BERT's
attention), path = that module. Each gets a :class:`~.karat_layers.FourierKArAt` child ``karat`` and hooks that
hand its softmax calls to it (:func:`~.karat_layers.attach_karat`). ``sharing: blockwise`` gives every site
its own operator (the paper's GnB, hL operators); ``universal`` one operator for all sites (GnU: each head's
operator shared across blocks). The operator's shapes depend on the sequence length N, so the pass needs a
fixed N: from ``seq_len``, else from the calibration batches (or a vision model's example batch) when all
share one length; a causal LM, batches of different lengths, or a text model with neither ``seq_len`` nor
calibration are errors. ``init: fit`` fits each operator to softmax on the recorded scores (reduced-rank
least squares); ``scratch`` is the paper's random start. Records hold the path, heads, N, rank, G and the
path of the site whose operator is shared, which is all replay needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from surgeon.errors import RecipeError, SurgeonError
from surgeon.inputs import example_inputs, input_kind
from surgeon.passes.kan.karat_layers import FourierKArAt, attach_karat, fit_karat, record_scores
from surgeon.patterns import softmax_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.runner import run_model


@dataclass(frozen=True, kw_only=True)
class KArAt(PassConfig):
    """Options of ``karat``: ``rank`` r (the paper's 12), ``grid`` G Fourier terms (1 or 3 in the paper),
    ``sharing`` blockwise (one operator per attention) | universal (one for all), ``seq_len`` (the fixed token
    count N; 0 = take it from the calibration batches), ``init`` fit (least squares to softmax on recorded
    scores) | scratch (random), ``seed`` (scratch), ``ridge`` (relative ridge of the fit)."""

    pass_name = "karat"
    rank: int = 12
    grid: int = 3
    sharing: Literal["blockwise", "universal"] = "blockwise"
    seq_len: int = 0
    init: Literal["fit", "scratch"] = "fit"
    seed: int = 0
    ridge: float = 1e-8

    def check(self) -> None:
        """Sizes positive (``seq_len`` 0 = infer), ``ridge`` non-negative."""
        for name, low in (("rank", 1), ("grid", 1), ("seq_len", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise RecipeError(f"option `{name}` of pass `karat` must be at least {low}, got {getattr(self, name)}",
                                  fix=f"Set `{name}` to {low} or more")
        if not self.ridge >= 0:
            raise RecipeError(f"option `ridge` of pass `karat` must be non-negative, got {self.ridge}",
                              fix="Use e.g. 1e-8")


@register_pass(KArAt)
class KArAtPass(PassHandler):
    """Replaces the softmax of fixed-length attention by Fourier-KArAt operators."""

    preserves = "changes"
    paper = ("Fourier-KArAt: Maity et al., 'Kolmogorov-Arnold Attention: Is Learnable Attention Better for "
             "Vision Transformers?' (arXiv 2503.10632)")
    summary = "Replace attention softmax by Fourier-KArAt's learnable low-rank operator (fixed sequence length)."
    site_kind = "attention module"

    def requires(self, ctx: PassContext, config: KArAt) -> None:
        if input_kind(ctx.model) == "causal-lm":
            raise SurgeonError(
                f"pass `karat` needs attention over a fixed number of tokens, but {type(ctx.model).__name__} is a "
                "causal LM: its length grows while it generates, and Fourier-KArAt's operator has N-dependent "
                "shapes (r×N functions, an N×r projection)", where="pass `karat`",
                fix="Apply `karat` to fixed-length encoders (ViT, BERT with a fixed `seq_len`)")

    def find(self, ctx: PassContext, config: KArAt) -> Found:
        found = Found()
        for path in dict.fromkeys(s.path for s in softmax_sites(ctx.capture)):
            if hasattr(ctx.model.get_submodule(path), "karat"):
                found.skipped.append((path, "already has a Fourier-KArAt operator"))
            else:
                found.sites.append(Site(path, path))
        return found

    def rewrite(self, ctx: PassContext, config: KArAt, sites: list[Site]) -> bool:
        model = ctx.model
        paths = [s.path for s in sites]
        batches = _batches(ctx, config)
        seen = record_scores(model, paths, lambda: [run_model(model, b) for b in batches])
        heads, n = _shapes(seen, config)
        ref = next(model.parameters())
        ops: dict[str, FourierKArAt] = {}
        for path in paths:
            if config.sharing == "universal" and ops:
                ops[path] = next(iter(ops.values()))
            else:
                ops[path] = FourierKArAt(heads, n, config.rank, config.grid).to(ref.device, ref.dtype)
        first = paths[0]
        gen = torch.Generator().manual_seed(config.seed)
        for path in paths:
            op = ops[path]
            shared = config.sharing == "universal" and path != first
            if not shared:
                sources = paths if config.sharing == "universal" else [path]
                if config.init == "fit":
                    rows = [_rows(t) for p in sources for t in seen[p]]
                    err = fit_karat(op, rows, config.ridge)
                    ctx.notes.append(f"{path}: operator fit to softmax on {sum(r.shape[1] for r in rows)} rows × "
                                     f"{heads} heads, relative error {err:.3e}")
                else:
                    op.reset_parameters(gen)
            attach_karat(model.get_submodule(path), op, path)
            sites[paths.index(path)].record = {"path": path, "heads": heads, "seq_len": n, "rank": config.rank,
                                               "grid": config.grid, "shared_with": first if shared else None}
        return bool(sites)

    def replay(self, model, config, record) -> None:
        module = model.get_submodule(record["path"])
        if record["shared_with"]:
            op = model.get_submodule(record["shared_with"]).karat
        else:
            ref = next(model.parameters())
            op = FourierKArAt(record["heads"], record["seq_len"], record["rank"], record["grid"]).to(
                ref.device, ref.dtype)
        attach_karat(module, op, record["path"])


def _batches(ctx: PassContext, config: KArAt) -> list:
    """The batches whose scores fix N and feed the fit: the calibration, else an example batch."""
    if ctx.calibration:
        return list(ctx.calibration)
    if input_kind(ctx.model) == "vision":  # the image size fixes the token count
        return [example_inputs(ctx.model)]
    if not config.seq_len:
        raise RecipeError(
            "pass `karat` cannot tell the sequence length of this text model: option `seq_len` is not set and no "
            "calibration batches were given (Fourier-KArAt's operator has N-dependent shapes)", where="pass `karat`",
            fix="Set `seq_len` to the fixed token count, or pass calibration batches that all have that length")
    return [example_inputs(ctx.model, seq=config.seq_len)]


def _shapes(seen: dict[str, list[torch.Tensor]], config: KArAt) -> tuple[int, int]:
    """(heads, N) shared by every recorded softmax; RecipeError for varying lengths, heads or odd shapes."""
    shapes = {}
    for path, tensors in seen.items():
        if not tensors:
            raise SurgeonError("no softmax ran in this module on the calibration batches", where=path,
                               fix="Target attention modules that compute softmax (eager attention)")
        for t in tensors:
            if t.dim() != 4 or t.shape[-1] != t.shape[-2]:
                raise SurgeonError(f"softmax input of shape {tuple(t.shape)} is not (batch, heads, N, N) "
                                   "self-attention scores", where=path,
                                   fix="Target self-attention modules of fixed-length encoders")
            shapes.setdefault((t.shape[1], t.shape[-1]), path)
    lengths = sorted({n for _, n in shapes})
    if len(lengths) > 1:
        raise RecipeError(
            f"pass `karat` needs one fixed sequence length, but the calibration batches give attention over "
            f"{', '.join(map(str, lengths))} tokens (Fourier-KArAt's operator has N-dependent shapes)",
            where="pass `karat`",
            fix="Pad or truncate every calibration batch to the same length (the one the model will always see), "
                "and set `seq_len` to it")
    heads = sorted({h for h, _ in shapes})
    if len(heads) > 1 and config.sharing == "universal":
        raise RecipeError(f"option `sharing: universal` of pass `karat` needs the same head count at every "
                          f"site, got {heads}", where="pass `karat`", fix="Use sharing: blockwise")
    if len(heads) > 1:
        raise RecipeError(f"pass `karat` found attention with different head counts {heads} in one step",
                          where="pass `karat`", fix="Target attentions with one head count per step")
    n = lengths[0]
    if config.seq_len and config.seq_len != n:
        raise RecipeError(
            f"option `seq_len` of pass `karat` is {config.seq_len}, but the calibration batches give attention "
            f"over {n} tokens", where="pass `karat`",
            fix=f"Pad or truncate the calibration batches to {config.seq_len} tokens, or set seq_len: {n}")
    if config.rank > n:
        raise RecipeError(f"option `rank` of pass `karat` ({config.rank}) exceeds the sequence length {n}: the "
                          "operator's low-rank map cannot use more than N directions", where="pass `karat`",
                          fix=f"Set rank to at most {n}")
    return heads[0], n


def _rows(scores: torch.Tensor) -> torch.Tensor:
    """(batch, H, N, N) scores as (H, batch·N, N) rows per head."""
    return scores.transpose(0, 1).reshape(scores.shape[1], -1, scores.shape[-1])
