"""``fake_quant``: insert weight and activation fake quantizers at Linear, softmax and K/V sites.

Sites (a site's ``path`` is what ``target`` selects):
- every Linear-like module (``nn.Linear``, GPT-2 ``Conv1D``), path = the module: it becomes a
  :class:`~.layers.QuantLinear` with the ``weight`` and ``input`` quantizers, plus the ``kv`` quantizer on
  its output when its name is one of ``kv_names`` (K and V projections);
- every module whose forward calls softmax (``softmax_sites``), path = that module (the attention): its
  softmax outputs go through the ``softmax`` quantizer (see :func:`~.layers.attach_softmax_quant`).
``exclude`` removes sites: ``embeddings`` (paths with a component containing ``embed``), ``head`` (the
output embeddings / ``lm_head``, ``classifier``, ``score`` heads), or any target (glob, ``re:``, type).
Static activation ranges, LSQ/ASQ steps and log Δ are observed on the calibration batches (else on the
example batch); weight clip ratios come from the weights (``observer: mse`` searches them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from surgeon.errors import RecipeError
from surgeon.inputs import example_inputs
from surgeon.passes.quant.layers import PackedLinear, QuantLinear, attach_softmax_quant
from surgeon.passes.quant.observers import observe
from surgeon.passes.quant.spec import parse
from surgeon.patterns import linear_view, softmax_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.pipeline.targets import target_matches
from surgeon.rewrite import set_submodule, tie_groups, untie

HEAD_NAMES = ("lm_head", "classifier", "score")


@dataclass(frozen=True, kw_only=True)
class FakeQuant(PassConfig):
    """Options of ``fake_quant``: a quantizer spec per site kind (see ``spec``), exclusions, observer."""

    pass_name = "fake_quant"
    weight: str = "int8-sym-channel"
    input: str = "int8-sym-token"
    softmax: str = "none"
    kv: str = "none"
    kv_names: tuple[str, ...] = ("k_proj", "v_proj", "key", "value")
    exclude: tuple[str, ...] = ("embeddings", "head")
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    percentile: float = 99.99

    def check(self) -> None:
        """Every spec parses for its site; ``percentile`` is in (50, 100]; something is quantised."""
        specs = {"weight": "weight", "input": "input", "softmax": "softmax", "kv": "output"}
        parsed = {field: parse(getattr(self, field), field=field, role=role) for field, role in specs.items()}
        if not 50 < self.percentile <= 100:
            raise RecipeError(f"option `percentile` of pass `fake_quant` must be in (50, 100], got {self.percentile}",
                              fix="Use e.g. 99.99")
        if all(p is None for p in parsed.values()):
            raise RecipeError("options `weight`, `input`, `softmax` and `kv` of pass `fake_quant` are all 'none'",
                              fix="Give at least one quantizer spec")


def _head_paths(model) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {p for p, m in model.named_modules() if m is head or p.rsplit(".", 1)[-1] in HEAD_NAMES}


def _site_name(model, path: str) -> str:
    """The Linear's own name; for the ``linear`` inside an equivalent-transform wrapper, the wrapper's."""
    parent, _, name = path.rpartition(".")
    if name == "linear" and parent and getattr(model.get_submodule(parent), "surgeon_pass", None) == "equiv":
        return parent.rsplit(".", 1)[-1]
    return name


def excluded_by(model, path: str, module, exclude: tuple[str, ...], heads: set[str]) -> str | None:
    """The ``exclude`` entry that removes ``path``, or None."""
    for entry in exclude:
        if entry == "embeddings" and any("embed" in part for part in path.split(".")):
            return entry
        if entry == "head" and path in heads:
            return entry
        if entry not in ("embeddings", "head") and target_matches(entry, path, module):
            return entry
    return None


def _group_problem(spec_text: str, field: str, role: str, width: int) -> str | None:
    spec = parse(spec_text, field=field, role=role)
    if spec is not None and spec.granularity == "group" and width % spec.group:
        return f"`{field}` groups of {spec.group} do not divide {width} features"
    return None


@register_pass(FakeQuant)
class FakeQuantPass(PassHandler):
    """Inserts fake quantizers (weights, Linear inputs, softmax outputs, K/V outputs)."""

    preserves = "changes"
    paper = ("OmniQuant (Shao et al., ICLR 2024) LWC; LSQ (Esser et al., 2020); ASQ/POST (arXiv 2504.17263); "
             "RepQ-ViT / RepQuant log√2 softmax quantizer")
    summary = "Insert weight/activation fake quantizers at Linear, softmax and K/V sites."
    site_kind = "Linear or softmax module"

    def find(self, ctx: PassContext, config: FakeQuant) -> Found:
        model = ctx.model
        heads = _head_paths(model)
        sites, skipped = [], []
        for path, module in model.named_modules():
            if isinstance(module, (QuantLinear, PackedLinear)):
                skipped.append((path, "already quantised"))
                continue
            weight = getattr(module, "weight", None)
            if not path or len(list(module.children())) or weight is None or weight.dim() != 2:
                continue
            view = linear_view(module)
            if view is None:
                continue
            is_kv = config.kv != "none" and _site_name(model, path) in config.kv_names
            if config.weight == "none" and config.input == "none" and not is_kv:
                continue
            entry = excluded_by(model, path, module, config.exclude, heads)
            problem = (f"excluded by `exclude` entry {entry!r}" if entry else
                       _group_problem(config.weight, "weight", "weight", view.in_features)
                       or _group_problem(config.input, "input", "input", view.in_features)
                       or (_group_problem(config.kv, "kv", "output", view.out_features) if is_kv else None))
            if problem:
                skipped.append((path, problem))
            else:
                sites.append(Site(path, path, data={"kind": "linear", "kv": is_kv}))
        if config.softmax != "none":
            for path in dict.fromkeys(s.path for s in softmax_sites(ctx.capture)):
                entry = excluded_by(model, path, model.get_submodule(path), config.exclude, heads)
                if entry:
                    skipped.append((path, f"excluded by `exclude` entry {entry!r}"))
                else:
                    sites.append(Site(path, path, data={"kind": "softmax"}))
        return Found(sites, skipped)

    def rewrite(self, ctx: PassContext, config: FakeQuant, sites: list[Site]) -> bool:
        groups = tie_groups(ctx.model)
        for site in sites:
            if site.data["kind"] == "softmax":
                attach_softmax_quant(ctx.model.get_submodule(site.path), config.softmax).to(_device(ctx.model))
                site.record = {"kind": "softmax", "path": site.path}
            else:
                site.record = quantise_linear(ctx.model, site.path, config, site.data["kv"], groups)
        batches = ctx.calibration or [example_inputs(ctx.model)]
        observe(ctx.model, batches, config.observer, config.percentile)
        return bool(sites)

    def replay(self, model, config: FakeQuant, record: dict) -> None:
        if record["kind"] == "softmax":
            attach_softmax_quant(model.get_submodule(record["path"]), config.softmax)
            return
        if record["untied"]:
            untie(model, record["path"])
        old = model.get_submodule(record["path"])
        ref = next(old.parameters())
        new = QuantLinear(record["in"], record["out"], record["bias"], weight=config.weight, input=config.input,
                          output=config.kv if record["kv"] else "none", device=ref.device, dtype=ref.dtype)
        set_submodule(model, record["path"], new)


def _device(model):
    return next(model.parameters()).device


def quantise_linear(model, path: str, config: FakeQuant, is_kv: bool, groups=None) -> dict:
    """Replace the Linear-like module at ``path`` by a QuantLinear; returns its replay record."""
    untied = untie(model, path, groups=groups)
    view = linear_view(model.get_submodule(path))
    w, b = view.weight().detach(), view.bias()
    new = QuantLinear(view.in_features, view.out_features, b is not None, weight=config.weight,
                      input=config.input, output=config.kv if is_kv else "none", device=w.device, dtype=w.dtype)
    new.to(w.device)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b.detach())
    if new.weight_quant is not None:
        new.weight_quant.init_from_weight(w, config.observer)
    set_submodule(model, path, new)
    return {"kind": "linear", "path": path, "in": view.in_features, "out": view.out_features,
            "bias": b is not None, "kv": is_kv, "untied": untied}
