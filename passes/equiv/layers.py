"""Invertible input transforms and the wrapper that applies one before a Linear.

A transform is an invertible n×n map T applied to a Linear's input online (x ↦ x·T, x (..., n)); the
Linear's weight W (out, n) then holds W·T⁻ᵀ, so the output is unchanged:
(x·T)(W·T⁻ᵀ)ᵀ = x·T·T⁻¹·Wᵀ = x·Wᵀ. Quantizers inside the Linear (after ``fake_quant``) see x·T.

Every transform is a *fixed* part (buffers, folded into the weights when the pass ran) times an optional
learnable *delta* D(θ) that is the identity at θ = 0. Block-wise calibration trains θ while the readers'
weights follow as W·D⁻ᵀ (a weight parametrization, see :func:`begin_training`); :func:`settle` then
folds D into the fixed part and the weights and resets θ to 0, so saved models carry no live delta.

- :class:`ScaleTransform`: T = diag(1/s) (SmoothQuant/LET); s (n,).
- :class:`DenseTransform`: T = M·diag(1/d)·C(A) with M (n, n) fixed (a rotation, possibly scaled), d
  (n,) and C the Cayley map of a skew matrix (QuaRot/SpinQuant rotations, OSTQuant's orthogonal+scale).
- :class:`KroneckerTransform`: T = diag(1/s)·(P1 ⊗ P2), P_i = M_i·C(A_i)·diag(σ_i)·C(B_i)ᵀ (FlatQuant),
  applied as P1ᵀ·X·P2 on x reshaped to (n1, n2): O(n(n1+n2)) per token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from surgeon.passes.equiv.linalg import cayley, kron_apply


def _skew_param(n: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(n, n))


class InputTransform(nn.Module):
    """Base class: ``forward(x) = x·T``; ``fold_delta(w) = w·D⁻ᵀ``; ``settle()`` folds D into the fixed part."""

    def __init__(self, n: int, learnable: bool):
        super().__init__()
        self.n = n
        self.learnable = learnable
        self.training_delta = False  # set while calibration trains the delta: compute it even at zero

    def calibration_parameters(self) -> list[nn.Parameter]:
        """The delta's parameters (empty for a fixed transform)."""
        return [p for p in self.parameters()] if self.learnable else []

    @torch.no_grad()
    def freeze(self) -> None:
        """Drop the delta's parameters once it has been settled (all zero): the transform becomes fixed,
        with no per-call check of the delta (after calibration, for inference and saving)."""
        if any(p.device.type != "meta" and bool(p.any()) for p in self.parameters()):
            raise RuntimeError("freeze() needs a settled delta: call settle(module) on the readers' module first")
        for name in list(self._parameters):
            delattr(self, name)
        self.learnable = False
        for flag in ("learn_scale", "learn_rotation", "learn_factors"):
            if hasattr(self, flag):
                setattr(self, flag, False)

    def delta_is_identity(self) -> bool:
        """True when the delta can be skipped: not training it and every parameter is zero.

        (While it trains it must be computed even at zero, or no gradient would reach it.)"""
        return not self.training_delta and all(not p.any() for p in self.parameters())

    def fold_delta(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (out, n) times D⁻ᵀ."""
        raise NotImplementedError

    def fold_fixed(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (out, n) times the fixed part's inverse transpose, in ``w``'s dtype (use float64)."""
        raise NotImplementedError

    def settle(self) -> None:
        """Fold the delta into the fixed part and reset it (the readers' weights are updated by the caller)."""
        raise NotImplementedError


class ScaleTransform(InputTransform):
    """x ↦ (x − δ)·diag(1/(s·e^θ)): a per-channel division (smoothing), with OmniQuant's shift δ when
    ``shifted`` (an affine map: the readers' biases take W·δ, see ``smooth``). ``scale``, ``shift`` (n,)
    buffers, θ (n,)."""

    def __init__(self, n: int, *, learnable: bool = False, shifted: bool = False):
        super().__init__(n, learnable)
        self.register_buffer("scale", torch.ones(n))
        if shifted:
            self.register_buffer("shift", torch.zeros(n))
        if learnable:
            self.log_delta = nn.Parameter(torch.zeros(n))

    def _delta(self) -> torch.Tensor | None:
        return torch.exp(self.log_delta) if self.learnable and not self.delta_is_identity() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self._delta()
        s = self.scale if d is None else self.scale * d
        if hasattr(self, "shift"):
            x = x - self.shift.to(x.dtype)
        return x / s.to(x.dtype)

    def fold_delta(self, w: torch.Tensor) -> torch.Tensor:
        d = self._delta()
        return w if d is None else w * d.to(w.dtype)

    def fold_fixed(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.scale.to(w.dtype)

    @torch.no_grad()
    def settle(self) -> None:
        if self.learnable:
            self.scale.mul_(torch.exp(self.log_delta))
            self.log_delta.zero_()


class DenseTransform(InputTransform):
    """T = M·diag(e^{−θ_d})·C(θ_A): ``matrix`` M (n, n) buffer; learnable scale θ_d (n,) and rotation θ_A (n, n)."""

    def __init__(self, n: int, *, learn_scale: bool = False, learn_rotation: bool = False):
        super().__init__(n, learn_scale or learn_rotation)
        self.register_buffer("matrix", torch.eye(n))
        self.learn_scale, self.learn_rotation = learn_scale, learn_rotation
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(n))
        if learn_rotation:
            self.skew = _skew_param(n)

    def _delta(self) -> torch.Tensor | None:
        """D = diag(e^{−θ_d})·C(θ_A) as a matrix, or None when it is the identity.

        Cached until a parameter changes (an optimiser step bumps its version): the readers of a group and
        the online transform then share one Cayley solve per step instead of one each."""
        if not self.learnable or self.delta_is_identity():
            return None
        key = tuple(p._version for p in self.parameters()) + (torch.is_grad_enabled(),)
        cached = self.__dict__.get("_delta_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        d = self._compute_delta()
        self.__dict__["_delta_cache"] = (key, d)
        return d

    def _compute_delta(self) -> torch.Tensor:
        d = torch.eye(self.n, device=self.matrix.device)
        if self.learn_rotation:
            d = cayley(self.skew)
        if self.learn_scale:
            d = torch.exp(-self.log_scale)[:, None] * d
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.matrix.to(x.dtype)
        d = self._delta()
        return y if d is None else y @ d.to(x.dtype)

    def fold_delta(self, w: torch.Tensor) -> torch.Tensor:
        # D⁻ᵀ = (diag(e^{−θ})·C)⁻ᵀ = diag(e^{θ})·C, since C is orthogonal.
        # D = diag(e^{−θ})·C with C orthogonal, so D⁻ᵀ = diag(e^{θ})·C = diag(e^{2θ})·D: reuse the cached D.
        d = self._delta()
        if d is None:
            return w
        if not self.learn_scale:
            return w @ d.to(w.dtype)
        return (w * torch.exp(2 * self.log_scale).to(w.dtype)) @ d.to(w.dtype)

    def fold_fixed(self, w: torch.Tensor) -> torch.Tensor:
        return w @ torch.linalg.inv(self.matrix.double()).T.to(w.dtype)

    @torch.no_grad()
    def settle(self) -> None:
        d = self._delta()
        if d is not None:
            self.matrix.copy_((self.matrix.double() @ d.double()).to(self.matrix.dtype))
        for p in self.parameters():
            p.zero_()


class KroneckerTransform(InputTransform):
    """FlatQuant's T = diag(1/s)·(P1 ⊗ P2), n = n1·n2; fixed ``m1``, ``m2``, ``scale``; learnable deltas.

    P_i = M_i·C(A_i)·diag(e^{σ_i})·C(B_i)ᵀ, so P_i⁻ᵀ = M_i⁻ᵀ·C(A_i)·diag(e^{−σ_i})·C(B_i)ᵀ is exact (no
    matrix inverse while training); the scale's delta is e^{θ_s}.
    """

    def __init__(self, n1: int, n2: int, *, learnable: bool = False, learn_scale: bool = False):
        super().__init__(n1 * n2, learnable or learn_scale)
        self.n1, self.n2 = n1, n2
        self.learn_factors, self.learn_scale = learnable, learn_scale
        self.register_buffer("m1", torch.eye(n1))
        self.register_buffer("m2", torch.eye(n2))
        self.register_buffer("scale", torch.ones(n1 * n2))
        if learnable:
            self.a1, self.b1, self.a2, self.b2 = (_skew_param(k) for k in (n1, n1, n2, n2))
            self.sigma1 = nn.Parameter(torch.zeros(n1))
            self.sigma2 = nn.Parameter(torch.zeros(n2))
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(n1 * n2))

    def _factor_deltas(self, inverse_t: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.learn_factors or self.delta_is_identity():
            return None
        sign = -1.0 if inverse_t else 1.0
        out = []
        for a, b, sigma in ((self.a1, self.b1, self.sigma1), (self.a2, self.b2, self.sigma2)):
            out.append(cayley(a) @ (torch.exp(sign * sigma)[:, None] * cayley(b).T))
        return out[0], out[1]

    def _scale(self) -> torch.Tensor:
        if self.learn_scale:
            return self.scale * torch.exp(self.log_scale)
        return self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self._scale().to(x.dtype)
        y = kron_apply(x, self.m1.to(x.dtype), self.m2.to(x.dtype))
        d = self._factor_deltas(inverse_t=False)
        return y if d is None else kron_apply(y, d[0].to(x.dtype), d[1].to(x.dtype))

    def fold_delta(self, w: torch.Tensor) -> torch.Tensor:
        # T = diag(1/(s·e^θ))·(M1·D1 ⊗ M2·D2), so W·T⁻ᵀ = W·diag(s·e^θ)·(M1⁻ᵀ·D1⁻ᵀ ⊗ M2⁻ᵀ·D2⁻ᵀ), and the
        # folded weight holds W·diag(s)·(M1⁻ᵀ ⊗ M2⁻ᵀ). A scale delta acts before the fixed factors: undo
        # them (·(M1 ⊗ M2)ᵀ), scale, redo them; the factor deltas then act last.
        out = w
        if self.learn_scale and (self.training_delta or bool(self.log_scale.any())):
            m1i, m2i = self._fixed_inverse_t()
            unfolded = kron_apply(out, self.m1.T.to(w.dtype), self.m2.T.to(w.dtype))
            out = kron_apply(unfolded * torch.exp(self.log_scale).to(w.dtype), m1i.to(w.dtype), m2i.to(w.dtype))
        d = self._factor_deltas(inverse_t=True)
        return out if d is None else kron_apply(out, d[0].to(w.dtype), d[1].to(w.dtype))

    def fold_fixed(self, w: torch.Tensor) -> torch.Tensor:
        m1i, m2i = (torch.linalg.inv(m.double()).T.to(w.dtype) for m in (self.m1, self.m2))
        return kron_apply(w * self.scale.to(w.dtype), m1i, m2i)

    def _fixed_inverse_t(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.linalg.inv(self.m1.double()).T.to(self.m1.dtype),
                torch.linalg.inv(self.m2.double()).T.to(self.m2.dtype))

    @torch.no_grad()
    def settle(self) -> None:
        if self.learn_scale:
            self.scale.mul_(torch.exp(self.log_scale))
        d = self._factor_deltas(inverse_t=False)
        if d is not None:
            self.m1.copy_((self.m1.double() @ d[0].double()).to(self.m1.dtype))
            self.m2.copy_((self.m2.double() @ d[1].double()).to(self.m2.dtype))
        for p in self.parameters():
            p.zero_()


class TransformedLinear(nn.Module):
    """``linear(transform(x))``: x (..., n) → (..., out). ``linear`` holds W·T⁻ᵀ.

    The readers of one activation share one transform module (registered in each wrapper, so the
    tensors are tied: saved once, moved with the model, traced like any child); ``shared_from`` names
    the group's first reader on the others.
    """

    def __init__(self, transform: InputTransform, linear: nn.Module, *, shared_from: str = ""):
        super().__init__()
        self.transform = transform
        self.linear = linear
        self.shared_from = shared_from
        self.surgeon_pass = "equiv"

    def input_transform(self) -> InputTransform:
        """The (possibly shared) transform."""
        return self.transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.transform(x))

    def extra_repr(self) -> str:
        return f"shared from {self.shared_from}" if self.shared_from else ""


class _DeltaFold(nn.Module):
    """Weight parametrization ``W ↦ W·D⁻ᵀ`` for one reader while its transform's delta trains."""

    def __init__(self, transform: InputTransform, transposed: bool):
        super().__init__()
        self.__dict__["transform"] = transform  # not a child: the transform lives in its wrapper
        self.transposed = transposed

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return self.transform.fold_delta(w.T).T
        return self.transform.fold_delta(w)


def wrappers(module: nn.Module) -> list[TransformedLinear]:
    """Every :class:`TransformedLinear` inside ``module``."""
    return [m for m in module.modules() if isinstance(m, TransformedLinear)]


def learnable_transforms(module: nn.Module) -> list[InputTransform]:
    """The distinct learnable transforms used inside ``module``."""
    seen: dict[int, InputTransform] = {}
    for w in wrappers(module):
        t = w.input_transform()
        if t.learnable:
            seen.setdefault(id(t), t)
    return list(seen.values())


def begin_training(module: nn.Module) -> list[nn.Parameter]:
    """Make the readers' weights follow their transforms' deltas; returns the delta parameters."""
    params = []
    for w in wrappers(module):
        t = w.input_transform()
        if not t.learnable:
            continue
        transposed = not isinstance(w.linear, nn.Linear)  # GPT-2's Conv1D stores (in, out)
        parametrize.register_parametrization(w.linear, "weight", _DeltaFold(t, transposed))
    for t in learnable_transforms(module):
        t.training_delta = True
        params += t.calibration_parameters()
    return params


def freeze_learnable(module: nn.Module) -> list[str]:
    """Freeze every learnable transform inside ``module``; returns the paths (relative to ``module``) of
    the wrappers owning them, one per transform, for replaying the freeze on load."""
    owners, seen = [], set()
    for path, m in module.named_modules():
        if isinstance(m, TransformedLinear) and m.transform.learnable and id(m.transform) not in seen:
            seen.add(id(m.transform))
            owners.append(path)
    for path in owners:
        module.get_submodule(path).transform.freeze()
    return owners


@torch.no_grad()
def settle(module: nn.Module) -> None:
    """Fold every trained delta inside ``module`` into its readers' weights and its fixed part."""
    folded = []
    for w in wrappers(module):
        if parametrize.is_parametrized(w.linear, "weight"):
            value = w.linear.weight.detach().clone()
            parametrize.remove_parametrizations(w.linear, "weight", leave_parametrized=False)
            folded.append((w.linear, value))
    for t in learnable_transforms(module):
        t.training_delta = False
        t.settle()
    for linear, value in folded:
        linear.weight.copy_(value)
