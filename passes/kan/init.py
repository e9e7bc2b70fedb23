"""Initialising a built ``kan`` site: ``fit``, ``distill`` or ``scratch`` (the ``init`` option).

* ``fit``: each new function is fitted to the function it replaces (identity for F1 / first-layer edges,
  the model's activation for F2 / edges that absorb it) on that site's own recorded inputs; KAN-layer edges
  start as original weight × per-channel fit, so ``y_j = Σ_i W_ji f_i(x_i)`` reproduces the MLP.
* ``distill``: ``fit``, then a short deterministic full-batch Adam fit of the whole new MLP to the original
  MLP's outputs (calibration inputs, or inputs drawn from the recorded per-channel mean and std).
* ``scratch``: KAT's from-scratch init: functions fitted on x ~ N(0, 1), Linear weights redrawn with
  std gain/√fan_in where gain² = E[F(x)²] for the function in front (computed by Monte Carlo).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from surgeon.passes.kan.basis import adaptive_knots, rational
from surgeon.passes.kan.build import absorbs_activation, inputs_of, mlp_forward
from surgeon.passes.kan.extra_fit import fit_edges, fit_group_basis, fit_group_daruan, set_residual
from surgeon.passes.kan.extra_layers import BasisKANLinear, GroupBasis, GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.fit import gaussian_gain, rational_fit, spline_fit
from surgeon.passes.kan.layers import BSplineKANLinear, GroupBSpline, GroupRational
from surgeon.patterns import linear_view


def identity(x: torch.Tensor) -> torch.Tensor:
    """The function F1 and first-layer edges start from."""
    return x


def grouped_samples(samples: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C) → (groups, N·C/groups): each group's channels pooled."""
    n, c = samples.shape
    return samples.reshape(n, groups, c // groups).transpose(0, 1).reshape(groups, -1)


@torch.no_grad()
def fit_activation(module: nn.Module, samples: torch.Tensor, target, config,
                   weights: torch.Tensor | None = None) -> None:
    """Fit a pure group activation to ``target`` on samples (N, C) of its input (in place).

    ``weights`` (C,): per-channel weights of the squared error (rational and B-spline fits use them)."""
    if isinstance(module, Selectable):  # S-KAN: every candidate fitted; the mixture is their average
        for cand in module.candidates:
            fit_activation(cand, samples, target, config)
        return
    pooled = grouped_samples(samples, module.groups)
    pooled_w = None if weights is None else grouped_samples(weights.double().expand(len(samples), -1), module.groups)
    if len(pooled[0]) > config.fit_samples:  # subsample every group alike, deterministically
        idx = torch.randperm(len(pooled[0]), generator=torch.Generator().manual_seed(config.seed))
        pooled = pooled[:, idx[: config.fit_samples]]
        pooled_w = None if pooled_w is None else pooled_w[:, idx[: config.fit_samples]]
    if isinstance(module, GroupBasis):
        fit_group_basis(module, pooled, target)
    elif isinstance(module, GroupDaruan):
        fit_group_daruan(module, pooled, target, config.seed)
    elif isinstance(module, GroupRational):
        num, den = rational_fit(pooled, target, weights=pooled_w, per_group=module.per_group)
        module.numerator.copy_(num)
        module.denominator.copy_(den)
    else:
        knots = adaptive_knots(pooled.T, module.grid, module.order, config.grid_eps)
        w, c = spline_fit(pooled.T, knots, module.order, target, weights=None if pooled_w is None else pooled_w.T)
        module.knots.copy_(knots)
        module.silu.copy_(w)
        module.coef.copy_(c)


@torch.no_grad()
def fit_kan_layer(layer: nn.Module, samples: torch.Tensor, target, weight: torch.Tensor,
                  bias: torch.Tensor | None, config) -> None:
    """Pure KAN layer whose edge i→j starts as ``weight_ji · f_i`` with f_i ≈ ``target`` on channel i."""
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
    if isinstance(layer, Selectable):
        for cand in layer.candidates:
            fit_kan_layer(cand, samples, target, weight, bias, config)
        return
    if isinstance(layer, (BasisKANLinear, QKANLinear)):
        fit_edges(layer, samples, target, weight, bias, config.seed)
        return
    if isinstance(layer, BSplineKANLinear):
        knots = adaptive_knots(samples, layer.grid, layer.order, config.grid_eps)
        w, c = spline_fit(samples, knots, layer.order, target)
        layer.knots.copy_(knots)
        layer.base_weight.copy_(weight * w[None, :])
        layer.spline_weight.copy_(weight[:, :, None] * c[None, :, :])
        layer.bias.copy_(bias)
    else:
        layer.linear.weight.copy_(weight)
        layer.linear.bias.copy_(bias)
        if target is not identity:
            fit_activation(layer.rational, samples, target, config)


def _weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    view = linear_view(module)
    bias = view.bias()
    return view.weight().detach().double(), None if bias is None else bias.detach().double()


@torch.no_grad()
def init_fit(model: nn.Module, record: dict[str, Any], originals: dict[str, nn.Module],
             data: dict[str, torch.Tensor], config) -> None:
    """``init: fit`` (see module docstring). ``originals`` maps paths to the replaced modules."""
    get = model.get_submodule
    residual = record["form"] == "residual"
    if record["structure"] == "hqkan":
        if residual:
            _hqkan_branch_start(get(record["down"]), data["h"], originals[record["act"]], config)
        else:
            _hqkan_fit(model, record, originals, data, config)
        return
    if record["structure"] == "kat":
        if residual:
            return  # residual corrections start at zero: already exact
        for path in inputs_of(record):
            f1 = get(path).act
            if needs_identity_fit(f1):  # rationals and Fourier/TruKAN start as the exact identity
                fit_activation(f1, data["x"], identity, config)
        fit_activation(get(record["act"]), data["pre"], originals[record["act"]], config,
                       weights=output_weights(originals[record["down"]], config))
        if config.fit_weighting in ("output", "norm"):
            fit_through_down(get(record["act"]), originals[record["act"]], originals[record["down"]], data["pre"],
                             config, row_weights=data.get("row_w") if config.fit_weighting == "norm" else None)
        return
    for path in inputs_of(record):
        _kan_from_linear(get(path), originals[path], data["x"], identity, residual, config)
    second = originals[record["act"]] if absorbs_activation(record) else identity
    second_inputs = data["pre"] if absorbs_activation(record) else data["h"]
    _kan_from_linear(get(record["down"]), originals[record["down"]], second_inputs, second, residual, config)


def output_weights(down: nn.Module, config) -> torch.Tensor | None:
    """Per-hidden-channel error weights ``‖W_down[:, c]‖²`` (``fit_weighting: down``), else None.

    F2's error on channel c reaches the MLP output through column c of the down projection, so this weights
    the activation fit by what it costs after fc2 (cross-channel terms ignored)."""
    if getattr(config, "fit_weighting", "uniform") != "down":
        return None
    return linear_view(down).weight().detach().double().pow(2).sum(0)


def fit_through_down(module: nn.Module, act: nn.Module, down: nn.Module, pre: torch.Tensor, config,
                     rows: int = 2048, iters: int = 100, row_weights: torch.Tensor | None = None) -> None:
    """Refine F2 (after its 1-D fit) by L-BFGS on the error after the down projection (``fit_weighting: output``):
    mean ‖(F(pre) − act(pre)) W_downᵀ‖² / mean ‖act(pre) W_downᵀ‖² over up to ``rows`` recorded rows, float64.
    ``row_weights`` (rows,) weight each row's error (``fit_weighting: norm``: 1/σ² of the residual stream at the
    next norm, which divides the row by σ). Only F2's few coefficients move, so this is a fit of the activation,
    not a distillation of the MLP."""
    w = torch.ones(len(pre), dtype=torch.float64) if row_weights is None else row_weights.double()
    if len(pre) > rows:
        keep = torch.randperm(len(pre), generator=torch.Generator().manual_seed(config.seed))[:rows]
        pre, w = pre[keep], w[keep]
    w = (w / w.mean())[:, None]
    weight = linear_view(down).weight().detach().double()
    work = copy.deepcopy(module).double()
    with torch.no_grad():
        target = act(pre.to(next(down.parameters()).dtype)).double() @ weight.T
    norm = (w * target.pow(2)).mean().clamp_min(1e-30)
    params = [p for p in work.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=30)

    def loss_fn():
        return (w * (work(pre) @ weight.T - target).pow(2)).mean() / norm

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.no_grad():
        start = float(loss_fn())
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        if float(loss_fn()) < start:  # keep the 1-D fit if L-BFGS did not improve it
            for p, q in zip(module.parameters(), work.parameters()):
                p.copy_(q.to(p.dtype))


def needs_identity_fit(module: nn.Module) -> bool:
    """Whether a pure F1 must be fitted to the identity (rationals and Fourier/TruKAN start as it exactly)."""
    return not isinstance(module, (GroupRational, GroupBasis))


def _width(module: Selectable) -> int:
    return module.candidates[0].width


def _kan_from_linear_weights(layer, samples, target, weight, residual: bool, config) -> None:
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    if not residual:
        fit_kan_layer(layer, samples, target, weight, bias, config)
    else:
        _residual_layer(layer, samples, weight, bias, config)


def _kan_from_linear(layer, original, samples, target, residual: bool, config) -> None:
    weight, bias = _weights(original)
    if not residual:
        fit_kan_layer(layer, samples, target, weight, bias, config)
        return
    _residual_layer(layer, samples, weight, bias, config)


def _residual_layer(layer, samples, weight, bias, config) -> None:
    """A residual KAN layer holding the original Linear (``weight``, ``bias``) with zero corrections."""
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
    if isinstance(layer, Selectable):  # the original Linear in the base; candidates with zero output, ranges set
        layer.base.weight.copy_(weight)
        layer.base.bias.copy_(bias)
        for cand in layer.candidates:
            fit_kan_layer(cand, samples, identity, torch.zeros_like(weight), torch.zeros_like(bias), config)
        return
    if isinstance(layer, (BasisKANLinear, QKANLinear)):
        set_residual(layer, samples, weight, bias)
        return
    if isinstance(layer, BSplineKANLinear):  # residual base branch is x: it holds the original Linear
        layer.knots.copy_(adaptive_knots(samples, layer.grid, layer.order, config.grid_eps))
        layer.base_weight.copy_(weight)
        layer.bias.copy_(bias)
    else:
        layer.linear.weight.copy_(weight)
        layer.linear.bias.copy_(bias)


def init_distill(model, record, originals, data, config) -> None:
    """``init: distill``: ``fit``, then full-batch Adam on the new MLP against the original's outputs."""
    init_fit(model, record, originals, data, config)
    x, y = data["distill_x"], data["distill_y"]
    params = [p for p in _site_parameters(model, record) if p.requires_grad]
    scale = y.pow(2).mean()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(config.steps, 1))
    best, best_state = math.inf, None
    with torch.enable_grad():
        for _ in range(config.steps):
            opt.zero_grad()
            loss = (mlp_forward(model, record, x) - y).pow(2).mean() / scale
            if loss.item() < best:  # keep the best iterate: Adam can overshoot on the last steps
                best, best_state = loss.item(), [p.detach().clone() for p in params]
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        final = float((mlp_forward(model, record, x) - y).pow(2).mean() / scale)
        if best_state is not None and best < final:
            for p, v in zip(params, best_state):
                p.copy_(v)
    torch.random.set_rng_state(gen_state)


def _site_parameters(model, record) -> list[nn.Parameter]:
    seen, out = set(), []
    for key in ("gate", "up", "act", "down"):
        if record[key]:
            for p in model.get_submodule(record[key]).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


@torch.no_grad()
def init_scratch(model, record, originals, config) -> None:
    """``init: scratch``: KAT's variance-preserving init with gains computed for the functions in front."""
    get = model.get_submodule
    gen = torch.Generator().manual_seed(config.seed)
    normal = torch.randn(50_000, 1, generator=gen).double()
    residual = record["form"] == "residual"
    act = originals[record["act"]]
    if record["structure"] == "hqkan" and residual:  # the branch's input redrawn, its output stays zero
        branch = get(record["down"])
        _redraw(branch.inp, 1.0, gen)
        k = branch.inp.out_features
        fit_kan_layer(branch.core, normal.expand(-1, k), act, torch.eye(k, dtype=torch.float64),
                      torch.zeros(k, dtype=torch.float64), config)
        return
    if record["structure"] == "hqkan":  # linears redrawn; the core's edges start as the activation (weight I)
        for path in inputs_of(record):
            _redraw(get(path), 1.0, gen)
        core = get(record["act"])
        k = get(record["down"]).in_features
        fit_kan_layer(core, normal.expand(-1, k), act, torch.eye(k, dtype=torch.float64),
                      torch.zeros(k, dtype=torch.float64), config)
        _redraw(get(record["down"]), gaussian_gain(act), gen)
        return
    if record["structure"] == "kat":
        fn2 = act
        if not residual:
            f2 = get(record["act"])
            fit_activation(f2, normal.expand(-1, f2.groups), act, config)
            fn2 = _first_group(f2)
            for path in inputs_of(record):
                if needs_identity_fit(get(path).act):
                    fit_activation(get(path).act, normal.expand(-1, get(path).act.groups), identity, config)
        for path in inputs_of(record):
            _redraw(get(path).linear, 1.0, gen)
        _redraw(get(record["down"]), gaussian_gain(fn2), gen)
        return
    for path in inputs_of(record):
        _scratch_kan(get(path), 1.0, identity, normal, residual, gen, config)
    second = act if absorbs_activation(record) else identity
    # Whatever the structure, the down projection reads (a function close to) the activation's output.
    _scratch_kan(get(record["down"]), gaussian_gain(act), second, normal, residual, gen, config)


def _scratch_kan(layer, gain, target, normal, residual, gen, config) -> None:
    if isinstance(layer, (BasisKANLinear, QKANLinear, Selectable)):  # redrawn weights, edges fitted on N(0, 1)
        fan_in = layer.in_features if not isinstance(layer, Selectable) else layer.candidates[0].in_features
        out = layer.out_features if not isinstance(layer, Selectable) else len(layer.mix[0])
        weight = torch.randn(out, fan_in, generator=gen, dtype=torch.float64) * gain / math.sqrt(fan_in)
        _kan_from_linear_weights(layer, normal.expand(-1, fan_in), target, weight, residual, config)
        return
    fan_in = layer.in_features if isinstance(layer, BSplineKANLinear) else layer.linear.in_features
    if isinstance(layer, BSplineKANLinear):
        bound = gain / math.sqrt(fan_in)  # efficient-kan's kaiming_uniform(a=√5) bound, times the gain
        layer.base_weight.copy_((torch.rand(layer.base_weight.shape, generator=gen) * 2 - 1) * bound)
        if not residual:  # efficient-kan: small spline noise of scale 0.1 / G
            noise = (torch.rand(layer.spline_weight.shape, generator=gen) - 0.5) * 0.1 / layer.grid
            layer.spline_weight.copy_(noise)
        layer.bias.zero_()
        return
    _redraw(layer.linear, gain, gen)
    if not residual and target is not identity:
        fit_activation(layer.rational, normal.expand(-1, layer.rational.groups), target, config)


def _redraw(linear: nn.Module, gain: float, gen: torch.Generator) -> None:
    view = linear_view(linear)
    w = view.weight()
    view.set_weight(torch.randn(w.shape, generator=gen, dtype=torch.float64) * gain / math.sqrt(w.shape[1]))
    if view.bias() is not None:
        view.set_bias(torch.zeros(w.shape[0], dtype=torch.float64))


def _first_group(module: nn.Module):
    """Group 0's function of a group activation, on 1-D inputs (scratch fits every group alike)."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1).double()
        if not isinstance(module, (GroupRational, GroupBSpline)):
            return module(x.expand(-1, module.width if hasattr(module, "width") else _width(module)))[:, 0]
        if isinstance(module, GroupRational):
            num = module.numerator[:1] if module.per_group else module.numerator
            return rational(x[:, None, :], num.double(), module.denominator[:1].double(),
                            per_group=module.per_group).reshape(-1)
        one = GroupBSpline(1, 1, module.grid, module.order).double()
        one.knots.copy_(module.knots[:1])
        one.silu.copy_(module.silu[:1])
        one.coef.copy_(module.coef[:1])
        return one(x).reshape(-1)
    return fn



def _principal(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (k, C), bias (k,)) mapping rows ``x`` to their top-k principal components, whitened."""
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    vh = torch.cat([vh, torch.zeros(max(k - len(vh), 0), x.shape[1], dtype=x.dtype)])[:k]  # fewer rows than k
    s = torch.cat([s, torch.zeros(max(k - len(s), 0), dtype=s.dtype)])[:k]
    std = (s / math.sqrt(max(len(x) - 1, 1))).clamp_min(1e-6)
    w = vh / std[:, None]
    return w, -w @ mean


@torch.no_grad()
def _hqkan_branch_start(branch: nn.Module, h: torch.Tensor, act, config) -> None:
    """Residual HQKAN: the branch's input = the top-k whitened principal directions of the hidden rows h, its
    core's edges = the MLP's activation (weight I), its output projection zero (so the MLP is unchanged)."""
    k = branch.inp.out_features
    w, b = _principal(h, k)
    branch.inp.weight.copy_(w)
    branch.inp.bias.copy_(b)
    fit_kan_layer(branch.core, h @ w.T + b, act, torch.eye(k, dtype=torch.float64),
                  torch.zeros(k, dtype=torch.float64), config)


@torch.no_grad()
def _hqkan_fit(model, record, originals, data, config) -> None:
    """HQKAN start from data (the bottleneck cannot keep the function): input projections = the top-k principal
    directions of the MLP input, whitened; the core's edges = the original activation (weight I); the output
    projection = least squares from the core's output to the original MLP output."""
    get = model.get_submodule
    x = data["x"]
    k = get(record["down"]).in_features
    w1, b1 = _principal(x, k)
    for path in inputs_of(record):
        lin = get(path)
        lin.weight.copy_(w1)
        lin.bias.copy_(b1)
    z = x @ w1.T + b1
    fit_kan_layer(get(record["act"]), z, originals[record["act"]], torch.eye(k, dtype=torch.float64),
                  torch.zeros(k, dtype=torch.float64), config)
    rows = data["distill_x"]
    ref = next(get(record["down"]).parameters())
    first = get(record["gate"] or record["up"])
    h = get(record["act"])(first(rows))
    if record["kind"] == "gated":
        h = h * get(record["up"])(rows)
    design = torch.cat([h.double(), torch.ones(len(h), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(design, data["distill_y"].double()).solution          # (k+1, d)
    get(record["down"]).weight.copy_(sol[:-1].T.to(ref.dtype))
    get(record["down"]).bias.copy_(sol[-1].to(ref.dtype))
