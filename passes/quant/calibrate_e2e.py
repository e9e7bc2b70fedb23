"""End-to-end calibration (``calibrate_quant`` with ``loss: kl_top`` or ``loss: ce``).

Instead of matching each block's output, every quantizer parameter and learnable transform of the model
trains at once on one model-level loss:
- ``kl_top`` (OSTQuant): for each real (unpadded) position, KL(p_fp ‖ p_q) restricted to the full-precision
  model's ``top_k`` classes and renormalised there (:func:`surgeon.passes.equiv.stats.kl_top_loss`), so the
  long tail of the vocabulary, which a few calibration batches cannot estimate, does not steer the parameters.
  FP targets are the model's own logits with every quantizer disabled (the transforms are exact). Needs a
  model whose output has ``logits`` (a causal or masked LM); an encoder without a head has none.
- ``ce`` (SpinQuant's objective, METHODS.md B.9): the fake-quantised network's next-token cross-entropy on the
  calibration tokens themselves (position t predicts token t + 1, both unpadded). Needs a causal LM. SpinQuant
  trains only its rotations, by Cayley SGD; here the same AdamW groups as ``kl_top`` train (transforms through
  their Cayley deltas, and any LWC/LSQ/ASQ parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.passes.equiv.stats import kl_top_loss
from surgeon.passes.quant.quantizers import set_enabled
from surgeon.runner import call_kwargs


def _logits(model: nn.Module, batch: dict, loss: str = "kl_top") -> torch.Tensor:
    out = model(**call_kwargs(model, batch))
    logits = getattr(out, "logits", None)
    if logits is None:
        raise SurgeonError(f"calibrate_quant's `loss: {loss}` compares next-token distributions, but "
                           f"{type(model).__name__} returns no logits", where=type(model).__name__,
                           fix="Use `loss: mse` (block-wise reconstruction) for models without an LM head")
    return logits


def _real_positions(batch: dict, logits: torch.Tensor) -> torch.Tensor:
    """Rows (positions, V) of ``logits`` at unpadded positions."""
    mask = batch.get("attention_mask")
    if mask is None or tuple(mask.shape) != tuple(logits.shape[:2]):
        return logits.reshape(-1, logits.shape[-1])
    return logits[mask.bool()]


def next_token_ce(batch: dict, logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, T, V) at position t against ``input_ids`` at t + 1, over pairs of
    positions that are both unpadded (``attention_mask``; every position when the batch has none)."""
    ids = batch["input_ids"]
    keep = torch.ones_like(ids[:, 1:], dtype=torch.bool)
    mask = batch.get("attention_mask")
    if mask is not None and tuple(mask.shape) == tuple(ids.shape):
        keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    return F.cross_entropy(logits[:, :-1][keep].float(), ids[:, 1:][keep])


def _check_ce(model: nn.Module, batches: list[dict]) -> None:
    name = type(model).__name__
    if not getattr(model, "can_generate", lambda: False)():
        raise SurgeonError(f"calibrate_quant's `loss: ce` is next-token cross-entropy, but {name} is not a causal "
                           f"language model", where=name,
                           fix="Use `loss: mse` (block-wise), or `loss: kl_top` for a masked LM with a head")
    if any(b.get("input_ids") is None or b["input_ids"].shape[-1] < 2 for b in batches):
        raise SurgeonError("calibrate_quant's `loss: ce` needs `input_ids` of at least 2 tokens in every "
                           "calibration batch (they are the labels)", where=name,
                           fix="Calibrate on tokenised text (a text file of lines, or batches with input_ids)")


def _train_end_to_end(model: nn.Module, batches: list[dict], config, prepare) -> float:
    """Train every quantizer and learnable transform of ``model`` at once, in eval mode, for ``config.epochs``;
    ``prepare()`` runs first (in eval mode) and returns ``loss_of(i)`` for batch i. Returns the last epoch's
    mean loss and restores the model's training flag."""
    from surgeon.passes.quant.calibrate import train_epochs, trainable_groups

    was_training = model.training
    model.eval()
    try:
        loss_of = prepare()
        gen = torch.Generator().manual_seed(config.seed)
        groups, release = trainable_groups(model, config)
        try:
            return train_epochs(groups, config.epochs, len(batches), gen, loss_of)
        finally:
            release()
    finally:
        model.train(was_training)


def calibrate_ce(model: nn.Module, batches: list[dict], config) -> float:
    """Train the model's quantizers and learnable transforms end to end on the quantised model's next-token
    cross-entropy (SpinQuant's loss); returns the last epoch's mean loss."""
    _check_ce(model, batches)
    return _train_end_to_end(model, batches, config, lambda: lambda i: next_token_ce(
        batches[i], _logits(model, batches[i], "ce")))


def calibrate_kl_top(model: nn.Module, batches: list[dict], config) -> float:
    """Train the model's quantizers and learnable transforms end to end on KL-Top against the model's own
    full-precision logits (every quantizer disabled); returns the last epoch's mean loss."""

    def prepare():
        with torch.no_grad():
            set_enabled(model, False)
            targets = [_real_positions(b, _logits(model, b)) for b in batches]
            set_enabled(model, True)
        k = min(config.top_k, targets[0].shape[-1])
        return lambda i: kl_top_loss(targets[i], _real_positions(batches[i], _logits(model, batches[i])), k=k)

    return _train_end_to_end(model, batches, config, prepare)
