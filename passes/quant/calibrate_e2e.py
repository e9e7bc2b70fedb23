"""End-to-end calibration with OSTQuant's KL-Top loss (``calibrate_quant`` with ``loss: kl_top``).

Instead of matching each block's output, every quantizer parameter and learnable transform of the model
trains at once against the full-precision model's next-token distribution: for each real (unpadded)
position, KL(p_fp ‖ p_q) restricted to the FP model's ``top_k`` classes and renormalised there
(:func:`surgeon.passes.equiv.stats.kl_top_loss`), so the long tail of the vocabulary, which a few
calibration batches cannot estimate, does not steer the parameters. FP targets are the model's own
logits with every quantizer disabled (the transforms are exact). Needs a model whose output has
``logits`` (a causal or masked LM); an encoder without a head has none.
"""

from __future__ import annotations

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.passes.equiv.stats import kl_top_loss
from surgeon.passes.quant.quantizers import set_enabled
from surgeon.runner import call_kwargs


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**call_kwargs(model, batch))
    logits = getattr(out, "logits", None)
    if logits is None:
        raise SurgeonError(f"calibrate_quant's `loss: kl_top` compares next-token distributions, but "
                           f"{type(model).__name__} returns no logits", where=type(model).__name__,
                           fix="Use `loss: mse` (block-wise reconstruction) for models without an LM head")
    return logits


def _real_positions(batch: dict, logits: torch.Tensor) -> torch.Tensor:
    """Rows (positions, V) of ``logits`` at unpadded positions."""
    mask = batch.get("attention_mask")
    if mask is None or tuple(mask.shape) != tuple(logits.shape[:2]):
        return logits.reshape(-1, logits.shape[-1])
    return logits[mask.bool()]


def calibrate_kl_top(model: nn.Module, batches: list[dict], config) -> float:
    """Train the model's quantizers and learnable transforms end to end on KL-Top; returns the last
    epoch's mean loss."""
    from surgeon.passes.quant.calibrate import train_epochs, trainable_groups

    was_training = model.training
    model.eval()
    with torch.no_grad():
        set_enabled(model, False)
        targets = [_real_positions(b, _logits(model, b)) for b in batches]
        set_enabled(model, True)
    k = min(config.top_k, targets[0].shape[-1])
    gen = torch.Generator().manual_seed(config.seed)
    groups, release = trainable_groups(model, config)
    try:
        last = train_epochs(groups, config.epochs, len(batches), gen,
                            lambda i: kl_top_loss(targets[i], _real_positions(batches[i], _logits(model, batches[i])), k=k))
    finally:
        release()
        model.train(was_training)
    return last
