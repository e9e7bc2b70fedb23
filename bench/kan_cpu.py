"""CPU time of the KAN-family layers against the MLP they replace, at one shape.

Shape: tokens N = 512, d = 64, d_ff = 256 (float32, 1 thread). Rows: the MLP (Linear, GELU, Linear); KAT
structures (F1 → fc1 → F2 → fc2) with each group activation; KAN structures (two KAN layers, no activation)
with each edge basis. Forward and forward+backward (sum of outputs) medians over repeats, after warm-up.
Run: ``python bench/kan_cpu.py``.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from surgeon.passes.kan import (BasisKANLinear, BSplineKANLinear, GroupBasis, GroupBSpline, GroupDaruan,
                                GroupRational, QKANLinear, RationalKANLinear, Selectable)

torch.set_num_threads(1)
N, D, DFF, REPEATS = 512, 64, 256, 7


def activation(basis: str, width: int) -> nn.Module:
    if basis == "rational":
        return GroupRational(width, 8)
    if basis == "bspline":
        return GroupBSpline(width, 8)
    if basis in ("fourier", "trukan"):
        return GroupBasis(width, 8, basis)
    if basis == "daruan":
        return GroupDaruan(width, 8, reps=3)
    names = ["bspline", "fourier", "trukan"]
    return Selectable([activation(n, width) for n in names], names, 8, 8)


def kan_layer(basis: str, i: int, o: int) -> nn.Module:
    if basis == "rational":
        return RationalKANLinear(i, o, 8)
    if basis == "bspline":
        return BSplineKANLinear(i, o)
    if basis in ("fourier", "trukan"):
        return BasisKANLinear(i, o, basis)
    if basis == "daruan":
        return QKANLinear(i, o, reps=3)
    names = ["bspline", "fourier", "trukan"]
    return Selectable([kan_layer(n, i, o) for n in names], names, o)


def timed(fn) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model: nn.Module) -> tuple[int, float, float]:
    x = torch.randn(N, D)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        fwd = timed(lambda: model(x))

    def step():
        model.zero_grad()
        model(x).sum().backward()
    return params, fwd, timed(step)


def main() -> None:
    rows = [("mlp", "gelu", nn.Sequential(nn.Linear(D, DFF), nn.GELU(), nn.Linear(DFF, D)))]
    for basis in ("rational", "bspline", "fourier", "trukan", "daruan", "selectable"):
        rows.append(("kat", basis, nn.Sequential(activation(basis, D), nn.Linear(D, DFF), activation(basis, DFF),
                                                 nn.Linear(DFF, D))))
    for basis in ("rational", "bspline", "fourier", "trukan", "daruan", "selectable"):
        rows.append(("kan", basis, nn.Sequential(kan_layer(basis, D, DFF), kan_layer(basis, DFF, D))))
    print(f"N={N}, d={D}, d_ff={DFF}, float32, {torch.get_num_threads()} thread, median of {REPEATS}")
    print("| structure | basis | params | forward ms | fwd+bwd ms | fwd+bwd vs MLP |")
    print("|---|---|---|---|---|---|")
    base = None
    for structure, basis, model in rows:
        params, fwd, both = measure(model)
        base = base or both
        print(f"| {structure} | {basis} | {params} | {fwd:.2f} | {both:.2f} | {both / base:.1f}x |")


if __name__ == "__main__":
    main()
