"""``calibrate_quant``: OmniQuant-style block-wise reconstruction of the quantizer parameters.

For each repeated block in order (the entries of the model's ModuleLists that hold quantizers), with the
block's keyword arguments (masks, positions) recorded at the first block:
- target = the full-precision block on the full-precision-propagated input;
- prediction = the quantised block on the input propagated through the already-calibrated blocks;
- loss = MSE over real tokens (an ``attention_mask`` in the batch excludes padding);
- only quantizer parameters train (LWC logits, LSQ/ASQ steps, ASQ adapters); AdamW (weight decay 0),
  a fixed seed for the batch order, ``epochs`` passes over the batches (bounded steps);
then both inputs move on to the next block. Only one block's activations per batch are kept at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.inputs import example_inputs
from surgeon.passes.equiv.effect import TransformEffect, effect_line
from surgeon.passes.equiv.layers import begin_training, freeze_learnable, learnable_transforms, settle
from surgeon.passes.quant.quantizers import quantizers, set_enabled
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.runner import call_kwargs


@dataclass(frozen=True, kw_only=True)
class CalibrateQuant(PassConfig):
    """Options of ``calibrate_quant``: ``epochs`` over the batches, learning rates, ``seed``.

    ``loss``: ``mse`` is the block-wise reconstruction above; ``kl_top`` trains every parameter at once
    end to end on OSTQuant's KL-Top loss over the FP model's ``top_k`` next-token classes (needs a model with
    logits); ``ce`` end to end on the quantised model's next-token cross-entropy, SpinQuant's loss (needs a
    causal LM); both in :mod:`.calibrate_e2e`.
    ``transform_lr`` is for learnable equivalent transforms (``smooth``/``rotate`` with ``learnable``,
    ``flat``, ``ost``): 2e-2, four times FlatQuant's and OmniQuant-LET's 5e-3 for the same reason as ``lr``
    (~50 steps instead of hundreds); on MiniLM's calibration sentences the block-wise losses after ``flat``
    fall from 0.0917 (5e-3) to 0.0888 (1e-2) and 0.0870 (2e-2), summed over the six blocks.
    ``lr`` is for LWC logits and ASQ adapters: 5e-2, five times OmniQuant's lwc_lr (1e-2), because the
    default budget here is ~50 AdamW steps (5 epochs of ~10 batches) where OmniQuant takes thousands; at
    1e-2 the clips are still moving after 5 epochs (docs/passes/quant.md has the measurements). Steps
    (LSQ, ASQ) use ``step_lr`` times their initial mean value, since a step's size is set by its tensor's
    scale.
    """

    pass_name = "calibrate_quant"
    epochs: int = 5
    lr: float = 5e-2
    step_lr: float = 1e-2
    transform_lr: float = 2e-2
    loss: Literal["mse", "kl_top", "ce"] = "mse"
    top_k: int = 1000
    seed: int = 0

    def check(self) -> None:
        """Positive epochs and learning rates."""
        from surgeon.errors import RecipeError

        if self.top_k < 1:
            raise RecipeError(f"option `top_k` of pass `calibrate_quant` must be ≥ 1, got {self.top_k}", fix="Use 1000")
        for name in ("epochs", "lr", "step_lr", "transform_lr"):
            if getattr(self, name) <= 0:
                raise RecipeError(f"option `{name}` of pass `calibrate_quant` must be > 0, got {getattr(self, name)}",
                                  fix=f"Set `{name}` to a positive value")


def _trainable(block: nn.Module) -> bool:
    return any(p.requires_grad for q in quantizers(block) for p in q.parameters()) or bool(
        learnable_transforms(block))


def quant_blocks(model: nn.Module) -> list[str]:
    """Paths of the repeated blocks holding trainable quantizers or learnable transforms, in order."""
    paths = []
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for i, block in enumerate(module):
                if _trainable(block):
                    paths.append(f"{path}.{i}" if path else str(i))
    return paths


class _Stop(Exception):
    pass


def block_inputs(model: nn.Module, first: nn.Module, batches: list) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of ``first``'s call for each batch (the model stops once it is reached)."""
    calls = []

    def grab(module, args, kwargs):
        calls.append((tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        raise _Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(**call_kwargs(model, batch)) if isinstance(batch, dict) else model(batch)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return calls


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, h):
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _run(block: nn.Module, call, h: torch.Tensor) -> torch.Tensor:
    """The block's hidden-state output for the recorded call with hidden input ``h``."""
    args, kwargs = _with_hidden(*call, h)
    out = block(*args, **kwargs)
    return out if torch.is_tensor(out) else out[0]


def _mask(batch, h: torch.Tensor) -> torch.Tensor | None:
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None or tuple(mask.shape) != tuple(h.shape[:2]):
        return None
    return mask.to(h.dtype)[..., None]


def _mse(pred, target, mask):
    if mask is None:
        return (pred - target).pow(2).mean()
    return ((pred - target).pow(2) * mask).sum() / (mask.sum() * pred.shape[-1])


def trainable_groups(module: nn.Module, config: CalibrateQuant | None):
    """AdamW parameter groups for every quantizer and learnable transform in ``module`` (weights frozen),
    and a ``release()`` that folds the trained transforms and restores the ``requires_grad`` flags.

    With ``config`` None nothing trains (the groups get learning rate 0 and transforms stay as they are).
    """
    quants = quantizers(module)
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    groups = []
    for q in quants:
        for name, p in q.named_parameters():
            p.requires_grad_(True)
            if name == "step":
                rate = float(p.detach().abs().mean().clamp_min(1e-8)) * (config.step_lr if config else 0.0)
                groups.append({"params": [p], "lr": rate})
            else:
                groups.append({"params": [p], "lr": config.lr if config else 0.0})
    transform_params = begin_training(module) if config is not None else []
    for p in transform_params:
        p.requires_grad_(True)
    if transform_params:
        groups.append({"params": transform_params, "lr": config.transform_lr})

    def release() -> None:
        for q in quants:
            for p in q.parameters():
                p.requires_grad_(False)
        for p in transform_params:
            p.requires_grad_(False)
        settle(module)  # fold trained transform deltas into the weights (a no-op without any)
        for p in frozen:
            p.requires_grad_(True)

    return groups, release


def train_epochs(groups: list[dict], epochs: int, n: int, gen: torch.Generator, loss_of) -> float:
    """AdamW (weight decay 0) over ``groups`` for ``epochs`` passes over items 0..n−1 in seeded random
    order, ``loss_of(i)`` giving item i's loss; returns the last epoch's mean loss."""
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    last = 0.0
    for _ in range(epochs):
        total = 0.0
        for i in torch.randperm(n, generator=gen).tolist():
            loss = loss_of(i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        last = total / n
    return last


def calibrate_block(block: nn.Module, calls, fp_in, q_in, masks, config: CalibrateQuant | None,
                    gen, effects: list | None = None) -> tuple[list, list, float]:
    """Train ``block``'s quantizers (none when ``config`` is None); return the next fp and quantised
    inputs and the final mean loss. Statistics of trained transforms are appended to ``effects``."""
    effect = TransformEffect(block) if config is not None and effects is not None else None
    with torch.no_grad():
        set_enabled(block, False)
        targets = [_run(block, call, h) for call, h in zip(calls, fp_in)]
        set_enabled(block, True)
    if effect is not None:
        effect.stop()
    groups, release = trainable_groups(block, config)
    last = 0.0
    try:
        if groups and config is not None:
            last = train_epochs(groups, config.epochs, len(calls), gen,
                                lambda i: _mse(_run(block, calls[i], q_in[i]), targets[i], masks[i]))
    finally:
        release()
    if effect is not None:
        effects += effect.finish()
    with torch.no_grad():
        q_out = [_run(block, call, h) for call, h in zip(calls, q_in)]
    return targets, q_out, last


def calibrate(model: nn.Module, batches: list, config: CalibrateQuant, only: set[str] | None = None,
              effects: list | None = None) -> dict[str, float]:
    """Block-wise reconstruction over ``batches``; returns each trained block's final mean loss.

    ``only`` limits training to those block paths; the other blocks still propagate both inputs.
    """
    paths = quant_blocks(model)
    if not paths:
        return {}
    was_training = model.training
    model.eval()
    calls = block_inputs(model, model.get_submodule(paths[0]), batches)
    fp_in = [_hidden(*c) for c in calls]
    q_in = list(fp_in)
    masks = [_mask(b, h) for b, h in zip(batches, fp_in)]
    gen = torch.Generator().manual_seed(config.seed)
    losses = {}
    for path in paths:
        train = only is None or path in only
        fp_in, q_in, loss = calibrate_block(model.get_submodule(path), calls, fp_in, q_in, masks,
                                            config if train else None, gen, effects)
        if train:
            losses[path] = loss
    model.train(was_training)
    return losses


@register_pass(CalibrateQuant)
class CalibrateQuantPass(PassHandler):
    """Trains the quantizer parameters block by block to match full-precision block outputs."""

    preserves = "changes"
    paper = "OmniQuant (Shao et al., ICLR 2024), block-wise error minimisation"
    summary = ("Block-wise reconstruction of quantizer parameters (LWC, LSQ, ASQ) and learnable transforms "
               "on calibration batches.")
    site_kind = "block with trainable quantizers"

    def find(self, ctx: PassContext, config: CalibrateQuant) -> Found:
        paths = quant_blocks(ctx.model)
        skipped = [] if paths else [("<model>", "no repeated block holds a trainable quantizer (use lwc/lsq/asq "
                                              "specs) or a learnable transform")]
        return Found([Site(p, p) for p in paths], skipped)

    def rewrite(self, ctx: PassContext, config: CalibrateQuant, sites: list[Site]) -> bool:
        batches = ctx.calibration or [example_inputs(ctx.model)]
        if not all(isinstance(b, dict) for b in batches):
            raise SurgeonError("calibrate_quant needs keyword-argument batches", fix="Pass batches as dicts")
        if config.loss in ("kl_top", "ce"):
            from surgeon.passes.quant.calibrate_e2e import calibrate_ce, calibrate_kl_top

            train, what = ((calibrate_kl_top, f"KL-Top (top {config.top_k})") if config.loss == "kl_top" else
                           (calibrate_ce, "next-token cross-entropy"))
            final = train(ctx.model, batches, config)
            ctx.notes.append(f"end-to-end {what} over {len(batches)} batches: final mean loss {final:.4g}")
            losses = {s.path: final for s in sites}
        else:
            effects: list = []
            losses = calibrate(ctx.model, batches, config, only={s.path for s in sites}, effects=effects)
            line = effect_line(effects)
            if line:
                ctx.notes.append(line)
        # Trained transforms become fixed (their deltas were folded; the parameters are dropped), recorded
        # for load: per trained block, or everywhere after end-to-end training.
        for site in sites:
            site.record = {"block": site.path, "loss": losses.get(site.path),
                           "frozen": [f"{site.path}.{p}" for p in freeze_learnable(ctx.model.get_submodule(site.path))]}
        if config.loss != "mse" and sites:
            sites[0].record["frozen"] += freeze_learnable(ctx.model)
        return bool(sites)

    def replay(self, model, config, record) -> None:
        """Freeze the transforms this step froze; the trained tensors are loaded with the weights."""
        for path in record.get("frozen", []):
            model.get_submodule(path).transform.freeze()
