"""Modules that ``fake_quant`` and ``pack_quant`` put into a model.

- :class:`QuantLinear`: an ``nn.Linear`` (weight (out, in), as always) whose weight, input and output
  pass through optional :class:`~.quantizers.Quantizer` s. Parameter names stay ``weight``/``bias``.
- :class:`PackedLinear`: the same layer with the quantised weight stored as packed integer codes
  (``codes``, uint8, 8/b codes per byte when b divides 8, else one per byte), per-row ``step`` (fp32)
  and ``zero`` (int16, shifted so codes are unsigned); it dequantises on the fly and reproduces the
  QuantLinear's output bit for bit.
- :class:`SoftmaxQuant`: the quantizer of softmax outputs inside one module (an attention), applied by
  intercepting the softmax calls that module's forward makes (see :func:`attach_softmax_quant`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn
from torch.overrides import TorchFunctionMode

from surgeon.passes.quant.quantizers import Quantizer

PASS_NAME = "fake_quant"


def _maybe(spec: str, role: str, shape) -> Quantizer | None:
    return None if spec == "none" else Quantizer(spec, role, shape)


class QuantLinear(nn.Linear):
    """``y = Q_out(Q_in(x) · Q_w(W)ᵀ + b)``; x (..., in) → y (..., out). A spec ``"none"`` means no quantizer."""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, weight: str, input: str,
                 output: str = "none", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_quant = _maybe(weight, "weight", (out_features, in_features))
        self.input_quant = _maybe(input, "input", (in_features,))
        self.output_quant = _maybe(output, "output", (out_features,))
        self.surgeon_pass = PASS_NAME

    def quantised_weight(self) -> torch.Tensor:
        """The weight as the forward uses it (fake-quantised when a weight quantizer is set)."""
        return self.weight if self.weight_quant is None else self.weight_quant(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = TF.linear(x, self.quantised_weight(), self.bias)
        return y if self.output_quant is None else self.output_quant(y)


def per_byte(bits: int) -> int:
    """Codes stored per byte: 8/b when b divides 8, else 1."""
    return 8 // bits if 8 % bits == 0 else 1


class PackedLinear(nn.Module):
    """A QuantLinear whose int weight is stored as packed codes + per-row step/zero (see module docstring).

    ``rows`` is the number of weight rows sharing one step (out·in/g for groups); the weight is rebuilt as
    ``(codes − zero) · step`` in the (rows, cols) layout and reshaped to (out, in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, *, bits: int, rows: int,
                 input: str = "none", output: str = "none", device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.rows = in_features, out_features, bits, rows
        n = out_features * in_features
        self.register_buffer("codes", torch.zeros(-(-n // per_byte(bits)), dtype=torch.uint8, device=device))
        self.register_buffer("step", torch.ones(rows, 1, device=device))
        self.register_buffer("zero", torch.zeros(rows, 1, dtype=torch.int16, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.input_quant = _maybe(input, "input", (in_features,))
        self.output_quant = _maybe(output, "output", (out_features,))
        self.surgeon_pass = "pack_quant"

    @torch.no_grad()
    def store(self, codes: torch.Tensor, step: torch.Tensor, zero: torch.Tensor) -> None:
        """Pack unsigned integer ``codes`` (rows, cols) and keep ``step``/``zero`` (rows, 1)."""
        flat = codes.reshape(-1).to(torch.uint8)
        k = per_byte(self.bits)
        pad = (-flat.numel()) % k
        flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, k)
        shifts = torch.arange(k, device=flat.device, dtype=torch.uint8) * self.bits
        self.codes.copy_((flat << shifts).sum(1, dtype=torch.int32).to(torch.uint8))
        self.step.copy_(step)
        self.zero.copy_(zero.to(torch.int16))

    def unpacked(self) -> torch.Tensor:
        """The unsigned codes as a (rows, cols) float tensor."""
        k = per_byte(self.bits)
        shifts = torch.arange(k, device=self.codes.device, dtype=torch.uint8) * self.bits
        mask = (1 << self.bits) - 1
        flat = ((self.codes[:, None] >> shifts) & mask).reshape(-1)[: self.out_features * self.in_features]
        return flat.reshape(self.rows, -1).to(self.step.dtype)

    def dequantised_weight(self) -> torch.Tensor:
        """``(codes − zero) · step`` as an (out, in) weight."""
        w = (self.unpacked() - self.zero.to(self.step.dtype)) * self.step
        dtype = self.bias.dtype if self.bias is not None else self.step.dtype
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = TF.linear(x, self.dequantised_weight(), self.bias)
        return y if self.output_quant is None else self.output_quant(y)


SOFTMAX_FUNCS = {TF.softmax, torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax}


class _QuantiseSoftmax(TorchFunctionMode):
    """Replaces each softmax output computed while active by its quantised value."""

    def __init__(self, quant: Quantizer):
        super().__init__()
        self.quant = quant

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in SOFTMAX_FUNCS:
            out = self.quant(out)
        return out


class SoftmaxQuant(Quantizer):
    """A log2/log√2 (or any activation) quantizer for the softmax outputs inside its parent module."""

    def __init__(self, spec: str):
        super().__init__(spec, "softmax", (1,))
        self.surgeon_pass = PASS_NAME


def _enter(module, args, kwargs):
    mode = _QuantiseSoftmax(module.softmax_quant)
    module.__dict__.setdefault("_surgeon_modes", []).append(mode)
    mode.__enter__()


def _leave(module, args, kwargs, output):
    modes = module.__dict__.get("_surgeon_modes")
    if modes:  # always_call: the mode is left even when the forward raised
        modes.pop().__exit__(None, None, None)


def attach_softmax_quant(module: nn.Module, spec: str) -> SoftmaxQuant:
    """Give ``module`` a ``softmax_quant`` child and hooks that quantise every softmax in its forward.

    Why hooks and a function mode rather than a graph edit: a rewritten graph would have to be installed
    as a CapturedModule, which cannot be saved yet, and BERT-style attention calls softmax through the
    attention interface; intercepting the call works for both and keeps parameter names unchanged.
    """
    quant = SoftmaxQuant(spec)
    module.softmax_quant = quant
    module.register_forward_pre_hook(_enter, with_kwargs=True)
    module.register_forward_hook(_leave, with_kwargs=True, always_call=True)
    return quant
