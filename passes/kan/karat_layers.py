"""Fourier-KArAt (METHODS.md A.3): a learnable low-rank operator that replaces softmax on attention rows.

:class:`FourierKArAt` is the operator (a plain ``nn.Module``); :func:`attach_karat` makes an attention module
call it instead of softmax, by the same interception as ``fake_quant``'s softmax quantizer (forward hooks
that enter a ``TorchFunctionMode`` while the module runs), so parameter names and the module's code stay as
they are; :func:`record_scores` uses the same hooks to record the scores softmax receives (for fits and for
finding the sequence length); :func:`fit_karat` fits an operator to softmax by reduced-rank least squares.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as TF
from torch import nn
from torch.overrides import TorchFunctionMode

from surgeon.errors import SurgeonError

PASS_NAME = "karat"
SOFTMAX_FUNCS = {TF.softmax, torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax}
# HF encoders mask padding by adding finfo.min (older code -10000, some -inf) to the scores. Scores this
# low are masks, not data: softmax gives them 0, so the operator ignores them and outputs 0 there.
MASKED = -1e4


class FourierKArAt(nn.Module):
    """Fourier-KArAt's modular operator for ``heads`` heads over ``seq_len`` tokens (rank r, G Fourier terms).

    Each score row a = A[..., h, k, :] (length N) maps to
        z_p = Σ_q Σ_{m=1..G} cos_coef[h, p, q, m-1]·cos(m a_q) + sin_coef[h, p, q, m-1]·sin(m a_q),  p = 1..r,
        out_n = Σ_p proj[h, n, p]·z_p                                                             (n = 1..N),
    i.e. σ̂(a) = W Φ̂(a) with zero base function (the paper's best) and no normalisation after W (the project
    page: outputs are not restricted to [0, 1]). Shapes: ``cos_coef``, ``sin_coef`` (H, r, N, G); ``proj``
    (H, N, r); input and output (..., H, N, N). Scores ≤ -1e4 (additive padding masks) contribute nothing and
    give output 0. Computed in the parameters' dtype; the output has the input's dtype.
    """

    def __init__(self, heads: int, seq_len: int, rank: int = 12, grid: int = 3):
        super().__init__()
        for name, value in (("heads", heads), ("seq_len", seq_len), ("rank", rank), ("grid", grid)):
            if value < 1:
                raise SurgeonError(f"FourierKArAt needs a positive `{name}`, got {value}", where="FourierKArAt",
                                   fix=f"Pass {name} >= 1")
        self.heads, self.seq_len, self.rank, self.grid = heads, seq_len, rank, grid
        self.cos_coef = nn.Parameter(torch.zeros(heads, rank, seq_len, grid))
        self.sin_coef = nn.Parameter(torch.zeros(heads, rank, seq_len, grid))
        self.proj = nn.Parameter(torch.zeros(heads, seq_len, rank))
        self.surgeon_pass = PASS_NAME

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random start: the paper's N(0, 1) coefficients scaled by 1/√(2GN) so that z has unit variance
        (as Fourier-KAN layers scale by fan-in), and W ~ N(0, 1/(r N²)) so outputs have softmax's 1/N scale."""
        fan = 2 * self.grid * self.seq_len
        for p, std in ((self.cos_coef, fan ** -0.5), (self.sin_coef, fan ** -0.5),
                       (self.proj, 1 / (self.seq_len * self.rank ** 0.5))):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).mul_(std).to(p.dtype))

    def features(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cos(m a), sin(m a), valid) for scores (..., H, N, N): (..., H, N, N, G) twice and the mask."""
        valid = scores > MASKED
        x = torch.where(valid, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
        angle = x.unsqueeze(-1) * torch.arange(1, self.grid + 1, dtype=x.dtype, device=x.device)
        keep = valid.unsqueeze(-1).to(x.dtype)
        return angle.cos() * keep, angle.sin() * keep, valid

    def check(self, scores: torch.Tensor, where: str = "FourierKArAt") -> None:
        """Raise a SurgeonError naming ``where`` unless ``scores`` is (..., heads, seq_len, seq_len)."""
        if isinstance(scores, torch.fx.Proxy):  # symbolic capture of the attention: shapes are unknown there
            return
        if scores.dim() < 3 or tuple(scores.shape[-3:]) != (self.heads, self.seq_len, self.seq_len):
            got = tuple(scores.shape[-3:]) if scores.dim() >= 3 else tuple(scores.shape)
            raise SurgeonError(
                f"the Fourier-KArAt operator replacing softmax was built for {self.heads} heads × "
                f"{self.seq_len} × {self.seq_len} attention scores (a fixed sequence length of {self.seq_len} "
                f"tokens), got (heads, queries, keys) = {got}", where=where,
                fix=f"Feed sequences of exactly {self.seq_len} tokens (pad with the attention mask), or apply "
                    "`karat` again with `seq_len` set to the length you use")

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        self.check(scores)
        cos, sin, valid = self.features(scores.to(self.proj.dtype))
        z = torch.einsum("...hkqm,hpqm->...hkp", cos, self.cos_coef) + \
            torch.einsum("...hkqm,hpqm->...hkp", sin, self.sin_coef)
        out = torch.einsum("...hkp,hnp->...hkn", z, self.proj)
        return (out * valid.to(out.dtype)).to(scores.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, seq_len={self.seq_len}, rank={self.rank}, grid={self.grid}"


# ------------------------------------------------------------------------------------- softmax interception


def _softmax_parts(func, args, kwargs) -> tuple[torch.Tensor, int | None, torch.dtype | None]:
    """(input, dim, dtype) of a softmax call in any of its spellings."""
    kwargs = kwargs or {}
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    dtype = kwargs.get("dtype")
    if dtype is None and len(args) > 2 and isinstance(args[-1], torch.dtype):
        dtype = args[-1]
    return x, dim, dtype


class _SoftmaxMode(TorchFunctionMode):
    """Hands each softmax call made while active to ``handle(func, args, kwargs)``; other calls run as they are."""

    def __init__(self, handle: Callable):
        super().__init__()
        self.handle = handle

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SOFTMAX_FUNCS:
            return self.handle(func, args, kwargs)
        return func(*args, **(kwargs or {}))


def _hook_mode(module: nn.Module, make: Callable[[], TorchFunctionMode]) -> list:
    """Enter ``make()`` for the duration of every forward of ``module``; returns the hook handles.

    Why hooks and a function mode (as ``fake_quant``'s softmax quantizer): transformers' attention calls
    softmax from a module-level ``eager_attention_forward``, so there is no submodule to swap; intercepting
    the call keeps the module's code and parameter names and works whether or not the module was captured.
    """
    stack: list[TorchFunctionMode] = []

    def enter(_module, args, kwargs):
        mode = make()
        stack.append(mode)
        mode.__enter__()

    def leave(_module, args, kwargs, output):
        if stack:  # always_call: the mode is left even when the forward raised
            stack.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter, with_kwargs=True),
            module.register_forward_hook(leave, with_kwargs=True, always_call=True)]


def _replace(op: FourierKArAt, path: str) -> Callable:
    def handle(func, args, kwargs):
        x, dim, dtype = _softmax_parts(func, args, kwargs)
        if isinstance(x, torch.fx.Proxy):  # traced by capture: record the operator's ops, check nothing
            out = op(x)
            return out if dtype is None else out.to(dtype)
        if dim is None or dim not in (-1, x.dim() - 1):
            raise SurgeonError(f"a softmax over dim {dim} of a {tuple(x.shape)} tensor is not an attention row "
                               "softmax, so Fourier-KArAt cannot replace it", where=path,
                               fix="Target only attention modules whose softmax runs over the keys (last dim)")
        op.check(x, path)
        out = op(x)
        return out if dtype is None else out.to(dtype)

    return handle


def attach_karat(module: nn.Module, op: FourierKArAt, path: str) -> None:
    """Make ``module`` (an attention) call ``op`` instead of softmax; ``op`` becomes its child ``karat``.

    The same ``op`` may be attached to several modules (universal sharing): it is then one set of tensors,
    saved once (surgeon's save stores tied tensors as aliases).
    """
    module.karat = op
    _hook_mode(module, lambda: _SoftmaxMode(_replace(op, path)))


@torch.no_grad()
def record_scores(model: nn.Module, paths: list[str], run: Callable[[], None]) -> dict[str, list[torch.Tensor]]:
    """Per module path, the inputs of the softmax calls it makes while ``run()`` runs (CPU float64 copies)."""
    seen: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    handles = []

    def recorder(path: str) -> Callable:
        def handle(func, args, kwargs):
            seen[path].append(args[0].detach().to("cpu", torch.float64))
            return func(*args, **(kwargs or {}))

        return handle

    for path in paths:
        handles += _hook_mode(model.get_submodule(path), lambda p=path: _SoftmaxMode(recorder(p)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


# --------------------------------------------------------------------------------------------------- fit


@torch.no_grad()
def fit_karat(op: FourierKArAt, rows: list[torch.Tensor], ridge: float = 1e-8) -> float:
    """Fit ``op`` to softmax on score rows, by reduced-rank least squares per head; returns the relative error.

    ``rows``: one (H, R, N) float64 tensor per source (R score rows of every head). The operator is
    out = W·C·f(a), f(a) the 2GN features cos(m a_q), sin(m a_q): a rank-r linear map of f. The best such map
    in least squares is the ridge solution B (2GN → N) projected on the top-r right singular vectors V_r of its
    fitted values F·B (reduced-rank regression), so W = V_r and C = V_rᵀB: the exact optimum, no iterations.
    """
    scores = torch.cat(rows, dim=1)                                                 # (H, R, N)
    target = torch.softmax(scores.masked_fill(scores <= MASKED, float("-inf")), dim=-1).nan_to_num(0.0)
    fit_op = FourierKArAt(op.heads, op.seq_len, op.rank, op.grid).double()
    cos, sin, _ = fit_op.features(scores)                                          # (H, R, N, G)
    H, R, N, G = cos.shape
    feats = torch.cat([cos, sin], dim=-1).reshape(H, R, N * 2 * G)                 # columns (q, [cos m | sin m])
    err_num = err_den = 0.0
    for h in range(H):
        F, T = feats[h], target[h]
        scale = F.pow(2).mean(0).sqrt().clamp_min(1e-12)                           # RMS-normalised columns
        Fs = F / scale
        gram = Fs.T @ Fs
        gram.diagonal().add_(ridge * R)
        B = torch.linalg.solve(gram, Fs.T @ T) / scale[:, None]                   # (2GN, N)
        _, _, vh = torch.linalg.svd(F @ B, full_matrices=False)
        k = min(op.rank, vh.shape[0])
        V = torch.zeros(N, op.rank, dtype=torch.float64)
        V[:, :k] = vh[:k].T                                                         # W (N, r); extra ranks unused
        C = (B @ V).reshape(N, 2 * G, op.rank)                                     # (q, 2G, p)
        fit_op.cos_coef[h] = C[:, :G].permute(2, 0, 1)
        fit_op.sin_coef[h] = C[:, G:].permute(2, 0, 1)
        fit_op.proj[h] = V
        pred = F @ B @ V @ V.T
        err_num += float((pred - T).pow(2).sum())
        err_den += float(T.pow(2).sum())
    for name in ("cos_coef", "sin_coef", "proj"):
        getattr(op, name).copy_(getattr(fit_op, name).to(getattr(op, name).dtype))
    return (err_num / max(err_den, 1e-300)) ** 0.5
