"""Representative example inputs for a model, derived from its config.

Capture, certification and tests need a batch that ``model(**batch)`` accepts. The kind of input is read
from the model's config (``image_size``/``num_channels`` for vision, ``vocab_size`` for text) and from its
attention modules (``is_causal``), not from a per-architecture table, so new transformers models work
without changes here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from surgeon.errors import SurgeonError

InputKind = Literal["causal-lm", "encoder", "vision"]


def input_kind(model: nn.Module) -> InputKind:
    """Which inputs ``model`` takes: token ids for a causal LM or an encoder, pixels for a vision model."""
    config = _config_of(model)
    if getattr(config, "image_size", None) is not None and getattr(config, "num_channels", None) is not None:
        return "vision"
    if getattr(config, "vocab_size", None) is None:
        raise SurgeonError(
            f"cannot tell what inputs a {type(config).__name__} model takes: it has neither "
            "image_size/num_channels nor vocab_size",
            where=type(model).__name__,
            fix="Pass the example inputs explicitly",
        )
    # transformers 5 attention modules carry `is_causal`; it is the ground truth for the mask the model
    # builds. `config.is_decoder` only exists on encoder-style configs (BERT and kin), so it is a fallback.
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if flags:
        return "causal-lm" if any(flags) else "encoder"
    return "encoder" if getattr(config, "is_decoder", None) is False else "causal-lm"


def example_inputs(
    model: nn.Module, *, batch: int = 2, seq: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``model(**inputs)``: a small seeded batch on the model's device.

    Text models get ``input_ids`` (uniform over the vocabulary) and ``attention_mask`` (all ones; for an
    encoder with ``batch > 1`` the last row's last two positions are padding, so masking is exercised).
    Vision models get ``pixel_values`` of shape ``(batch, num_channels, image_size, image_size)`` in the
    model's floating dtype; ``seq`` is ignored for them.
    """
    if batch < 1 or seq < 1:
        raise SurgeonError(
            f"batch and seq must be positive, got batch={batch}, seq={seq}", where="example_inputs"
        )
    config = _config_of(model)
    kind = input_kind(model)
    device, float_dtype = _device_and_dtype(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    if kind == "vision":
        height, width = _pair(config.image_size)
        pixels = torch.randn(batch, config.num_channels, height, width, generator=gen)
        return {"pixel_values": pixels.to(device=device, dtype=float_dtype)}

    limit = _max_positions(config)
    if limit is not None and seq > limit:
        raise SurgeonError(
            f"seq={seq} is longer than the model's {limit} positions",
            where=type(model).__name__,
            fix=f"Use seq <= {limit}",
        )
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if kind == "encoder" and batch > 1:
        # Right padding on one row only: rows then differ in length, and encoders attend
        # bidirectionally, so any padding layout is valid input.
        attention_mask[-1, max(seq - 2, 1):] = 0
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _config_of(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise SurgeonError(
            f"{type(model).__name__} has no transformers config, so its inputs cannot be derived",
            where="example_inputs",
            fix="Pass the example inputs explicitly, or load the model with surgeon.load_model",
        )
    return config


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    device, dtype = torch.device("cpu"), torch.float32
    for i, param in enumerate(model.parameters()):
        if i == 0:
            device = param.device
        if param.is_floating_point():
            return device, param.dtype
    return device, dtype


def _max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)
