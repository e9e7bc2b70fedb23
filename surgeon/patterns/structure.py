"""Recognising modules by what they compute, not by class name.

- *Linear-like*: a childless module with a 2-D ``weight`` (and optional 1-D ``bias``) whose output is
  ``x @ Wᵀ + b`` (``nn.Linear`` and subclasses) or ``x @ W + b`` (GPT-2's ``Conv1D``). Passes edit them
  through :class:`LinearView`, which always exposes the weight as (out, in).
- *Norm*: a childless module with a 1-D ``weight`` (and optional ``bias``) whose output is a per-channel
  affine map of the RMS- or layer-normalised input. The effective gain is measured, so Gemma's
  ``(1 + w)`` scale is recognised like any other.
- *Activation*: a childless module without parameters or buffers that acts elementwise and is not the
  identity.
Each probe runs the module once on a small seeded input; results are cached per module object.
"""

from __future__ import annotations

import copy
import functools
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

_PROBE_ROWS = 16
_NORM_TOL = 1e-5
_cache: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cached(module: nn.Module, key: str, compute):
    slot = _cache.setdefault(module, {})
    if key not in slot:
        slot[key] = compute()
    return slot[key]


def forget(module: nn.Module) -> None:
    """Drop cached probe results for ``module`` (after its parameters were edited)."""
    _cache.pop(module, None)


def _childless(module: nn.Module) -> bool:
    return next(module.children(), None) is None


@functools.lru_cache(maxsize=64)
def _probe_base(n: int, width: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(n, width, generator=gen, dtype=torch.float64) * 1.5 + 0.3


def _probe_input(n: int, width: int, dtype: torch.dtype, device) -> torch.Tensor:
    # The same seeded draw every time (cached: a fold probes one norm per block).
    return _probe_base(n, width).to(dtype=dtype, device=device, copy=True)  # probes must not share it


# ---------------------------------------------------------------------------------------------- linear


@dataclass
class LinearView:
    """A Linear-like module seen as ``y = x Wᵀ + b`` with W shaped (out, in), whatever its storage."""

    module: nn.Module
    transposed: bool  # True when the module stores W as (in, out), like GPT-2's Conv1D

    @property
    def in_features(self) -> int:
        """Input width."""
        return self.module.weight.shape[0 if self.transposed else 1]

    @property
    def out_features(self) -> int:
        """Output width."""
        return self.module.weight.shape[1 if self.transposed else 0]

    def weight(self) -> torch.Tensor:
        """The weight as (out, in) (a view of the stored parameter)."""
        w = self.module.weight
        return w.t() if self.transposed else w

    def bias(self) -> torch.Tensor | None:
        """The bias, or None."""
        return getattr(self.module, "bias", None)

    def set_weight(self, w_out_in: torch.Tensor) -> None:
        """Replace the weight's values (given as (out, in)), keeping the storage layout and dtype."""
        stored = w_out_in.t() if self.transposed else w_out_in
        self.module.weight = nn.Parameter(stored.contiguous().to(self.module.weight.dtype),
                                          requires_grad=self.module.weight.requires_grad)
        forget(self.module)

    def set_bias(self, b: torch.Tensor) -> None:
        """Set (or create) the bias."""
        old = getattr(self.module, "bias", None)
        dtype = old.dtype if old is not None else self.module.weight.dtype
        self.module.bias = nn.Parameter(b.to(dtype), requires_grad=self.module.weight.requires_grad)
        forget(self.module)


def linear_view(module: nn.Module) -> LinearView | None:
    """A :class:`LinearView` of ``module`` when it computes an affine map, else None."""
    if isinstance(module, nn.Linear):
        return LinearView(module, transposed=False)
    return _cached(module, "linear", lambda: _probe_linear(module))


def _probe_linear(module: nn.Module) -> LinearView | None:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if not _childless(module) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    names = {n for n, _ in module.named_parameters()}
    if not names <= {"weight", "bias"}:
        return None
    if weight.device.type == "meta":
        return None
    for transposed in (False, True):
        w = weight.t() if transposed else weight
        out_f, in_f = w.shape
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_f):
            continue
        x = _probe_input(4, in_f, weight.dtype, weight.device)
        try:
            with torch.no_grad():
                y = module(x)
        except Exception:  # noqa: BLE001 - wrong orientation raises a shape error
            continue
        expected = x @ w.t() + (bias if bias is not None else 0)
        if isinstance(y, torch.Tensor) and y.shape == expected.shape and torch.allclose(y, expected, rtol=1e-4, atol=1e-5):
            return LinearView(module, transposed=transposed)
    return None


def is_linear(module: nn.Module) -> bool:
    """True for Linear-like modules (see :func:`linear_view`)."""
    return linear_view(module) is not None


# ------------------------------------------------------------------------------------------------ norm


@dataclass(frozen=True)
class NormInfo:
    """A recognised norm: its kind, epsilon, and effective per-channel gain and bias (float64)."""

    kind: Literal["rms", "layer"]
    eps: float
    gain: torch.Tensor
    bias: torch.Tensor
    width: int


def normalise(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """The weightless normalisation of the last dimension (RMS or layer norm)."""
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _epsilon(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "norm_eps"):
        value = getattr(module, name, None)
        if isinstance(value, float) and 0 < value < 1e-1:
            return value
    return None


def norm_info(module: nn.Module) -> NormInfo | None:
    """Recognise ``module`` as an RMS or layer norm by probing it; None when it is neither."""
    return _cached(module, "norm", lambda: _probe_norm(module))


def is_norm(module: nn.Module) -> bool:
    """True for modules :func:`norm_info` recognises."""
    return norm_info(module) is not None


def _probe_norm(module: nn.Module) -> NormInfo | None:
    weight = getattr(module, "weight", None)
    if not _childless(module) or not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    names = {n for n, _ in module.named_parameters()}
    if not names <= {"weight", "bias"} or weight.device.type == "meta":
        return None
    width = weight.shape[0]
    eps = _epsilon(module)
    if eps is None:
        return None
    # fp32 modules are probed as they are (float32 round-off is far below the fold's 1e-5 budget);
    # lower precisions are probed on a float64 copy so the measured gain is not rounded to bf16.
    probe = module if weight.dtype == torch.float32 else copy.deepcopy(module).double()
    dtype = torch.float32 if probe is module else torch.float64
    x = _probe_input(_PROBE_ROWS * 4, width, torch.float64, "cpu").to(weight.device)
    try:
        with torch.no_grad():
            y = probe(x.to(dtype)).double()
    except Exception:  # noqa: BLE001
        return None
    if y.shape != x.shape:
        return None
    for kind in ("rms", "layer"):
        n = normalise(x, kind, eps)
        # Per-channel least squares y[:, j] = gain_j * n[:, j] + bias_j.
        n_mean, y_mean = n.mean(0), y.mean(0)
        nc, yc = n - n_mean, y - y_mean
        gain = (nc * yc).sum(0) / (nc * nc).sum(0)
        bias = y_mean - gain * n_mean
        fit = gain * n + bias
        if (fit - y).norm() <= _NORM_TOL * max(float(y.norm()), 1e-30):
            if getattr(module, "bias", None) is None:
                bias = torch.zeros_like(bias)  # no bias parameter: the fit's ~1e-8 residue is not a bias
            return NormInfo(kind, eps, gain.detach(), bias.detach(), width)
    return None


# ------------------------------------------------------------------------------------------ activation


def is_activation(module: nn.Module) -> bool:
    """True for parameterless childless modules that act elementwise and are not the identity, and for
    learnable activations that declare themselves with ``surgeon_activation = True`` (PolyReLU, ...)."""
    if getattr(module, "surgeon_activation", False) is True:
        return True
    return _cached(module, "activation", lambda: _probe_activation(module))


def _probe_activation(module: nn.Module) -> bool:
    if not _childless(module) or any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return False
    x = _probe_input(3, 7, torch.float32, "cpu")
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(7))
    try:
        with torch.no_grad():
            y = module(x)
            y_perm = module(x.flatten()[perm].reshape(x.shape))
    except Exception:  # noqa: BLE001
        return False
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return False
    elementwise = torch.allclose(y.flatten()[perm], y_perm.flatten(), rtol=1e-5, atol=1e-6)
    return elementwise and not torch.allclose(y, x)
