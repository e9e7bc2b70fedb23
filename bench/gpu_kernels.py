"""GPU benchmark of surgeon's Triton kernels, side by side with torch.clone, eager and torch.compile.

    PYTHONPATH=. python bench/gpu_kernels.py [--shapes 8192x4096 8192x14336] [--out results.json]
        [--only NAME ...] [--sweep]

For each kernel and shape (bf16): median µs by ``triton.testing.do_bench``, logical GB/s (bytes the
operation must read and write once), and the ratios to ``torch.clone`` of the largest operand, to the
eager torch reference and to ``torch.compile`` of that same reference, all measured in this one run.
Imports the kernels as the top-level ``kernels`` package so it runs where surgeon is not installed. (No
script here may be named ``kernels.py``: transformers probes for a package of that name, and a script
in this folder would answer.)
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
import triton

from kernels.bspline_basis.reference import bspline_basis_reference
from kernels.bspline_basis.triton_kernel import bspline_basis_backward, bspline_basis_forward
from kernels.fake_quant.reference import fake_quant_dynamic_reference, fake_quant_reference
from kernels.fake_quant.triton_kernel import fake_quant_dynamic_forward, fake_quant_forward
from kernels.gated_act.reference import gated_act_reference
from kernels.gated_act.triton_kernel import gated_act_backward, gated_act_forward
from kernels.group_rational.reference import group_rational_reference
from kernels.hadamard_quant.reference import hadamard_quant_reference
from kernels.hadamard_quant.triton_kernel import hadamard_quant_forward
from kernels.kron_quant.reference import kron_quant_reference
from kernels.kron_quant.triton_kernel import kron_quant_forward
from kernels.w4a16_linear.reference import w4a16_linear_reference
from kernels.w4a16_linear.triton_kernel import w4a16_linear_forward
from kernels.group_rational.triton_kernel import group_rational_backward, group_rational_forward

GROUPS = 8
SWEEP = False  # set by --sweep: also time kernel variants
SPLINE_GRID, SPLINE_ORDER = 5, 3  # efficient-kan's defaults: G + k = 8 bases per channel
KAN_LAYER_UP_TO = 4096  # the B-spline KANLinear case (one (in·8 → in) GEMM) only at widths up to this


def bench(fn) -> float:
    """Median microseconds of ``fn`` (CUDA events, after warm-up)."""
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median") * 1e3


def rational_cases(x):
    """(name, bytes, triton fn, eager fn, compiled fn, check) for the group-rational kernels."""
    a = torch.randn(6, device=x.device) * 0.3
    b = torch.randn(GROUPS, 4, device=x.device) * 0.3
    g = torch.randn_like(x)
    compiled = torch.compile(group_rational_reference, dynamic=False)
    nbytes = 2 * x.numel() * x.element_size()

    def eager_train():
        xx = x.detach().requires_grad_()
        aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
        group_rational_reference(xx, aa, bb).backward(g)

    def compiled_train():
        xx = x.detach().requires_grad_()
        aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
        compiled(xx, aa, bb).backward(g)

    def triton_train():
        group_rational_forward(x, a, b)
        group_rational_backward(g, x, a, b)

    def check():
        want = group_rational_reference(x.float(), a, b)
        got = group_rational_forward(x, a, b).float()
        return float((got - want).norm() / want.norm())

    yield "rational fwd", nbytes, lambda: group_rational_forward(x, a, b), \
        lambda: group_rational_reference(x, a, b), lambda: compiled(x, a, b), check
    # forward + backward moves x and y, then x, g and dx: five tensors of x's size.
    yield "rational fwd+bwd", 5 * x.numel() * x.element_size(), triton_train, eager_train, compiled_train, check


def quant_cases(x):
    """The fake-quant kernels: static per-group(128) int4 scales, and dynamic per-token int8."""
    rows, width = x.shape
    scale = (x.float().reshape(rows, -1, 128).abs().amax(-1) / 7).contiguous()
    zero = torch.zeros_like(scale)
    static_ref = torch.compile(fake_quant_reference, dynamic=False)
    dyn_ref = torch.compile(fake_quant_dynamic_reference, dynamic=False)
    nbytes = 2 * x.numel() * x.element_size()

    def check_static():
        want = fake_quant_reference(x, scale, zero, 128, -8, 7).float()
        got = fake_quant_forward(x, scale, zero, 128, -8, 7).float()
        return float((got - want).norm() / want.norm())

    def check_dynamic():
        want = fake_quant_dynamic_reference(x, width, 8).float()
        got = fake_quant_dynamic_forward(x, width, 8).float()
        return float((got - want).norm() / want.norm())

    yield "fake-quant int4 g128 fwd", nbytes, lambda: fake_quant_forward(x, scale, zero, 128, -8, 7), \
        lambda: fake_quant_reference(x, scale, zero, 128, -8, 7), \
        lambda: static_ref(x, scale, zero, 128, -8, 7), check_static
    yield "fake-quant int8 per-token fwd", nbytes, lambda: fake_quant_dynamic_forward(x, width, 8), \
        lambda: fake_quant_dynamic_reference(x, width, 8), lambda: dyn_ref(x, width, 8), check_dynamic


def gated_cases(x):
    """SwiGLU with a per-channel multiplier, forward and forward+backward (gate and up of x's shape)."""
    up = torch.randn_like(x)
    m = torch.rand(x.shape[1], device=x.device) + 0.5
    g = torch.randn_like(x)
    compiled = torch.compile(gated_act_reference, dynamic=False)
    size = x.numel() * x.element_size()

    def train(fn):
        def run():
            gg, uu, mm = (t.detach().requires_grad_() for t in (x, up, m))
            fn(gg, uu, mm, "silu").backward(g)
        return run

    def triton_train():
        gated_act_forward(x, up, m, "silu")
        gated_act_backward(g, x, up, m, "silu")

    def check():
        want = gated_act_reference(x, up, m, "silu").float()
        got = gated_act_forward(x, up, m, "silu").float()
        return float((got - want).norm() / want.norm())

    yield "swiglu+mult fwd", 3 * size, lambda: gated_act_forward(x, up, m, "silu"), \
        lambda: gated_act_reference(x, up, m, "silu"), lambda: compiled(x, up, m, "silu"), check
    # forward reads gate, up and writes y; backward reads grad, gate, up and writes d gate, d up.
    yield "swiglu+mult fwd+bwd", 8 * size, triton_train, train(gated_act_reference), train(compiled), check


def rational_gated_cases(x):
    """Group-rational gate times up with a per-channel multiplier (KAT's rational in a GLU), fwd and fwd+bwd."""
    up = torch.randn_like(x)
    m = torch.rand(x.shape[1], device=x.device) + 0.5
    a = torch.randn(6, device=x.device) * 0.3
    b = torch.randn(GROUPS, 4, device=x.device) * 0.3
    g = torch.randn_like(x)
    compiled = torch.compile(gated_act_reference, dynamic=False)
    size = x.numel() * x.element_size()

    def train(fn):
        def run():
            gg, uu, mm, aa, bb = (t.detach().requires_grad_() for t in (x, up, m, a, b))
            fn(gg, uu, mm, "rational", aa, bb).backward(g)
        return run

    def triton_train():
        gated_act_forward(x, up, m, "rational", a, b)
        gated_act_backward(g, x, up, m, "rational", a, b)

    def check():
        want = gated_act_reference(x, up, m, "rational", a, b).float()
        got = gated_act_forward(x, up, m, "rational", a, b).float()
        return float((got - want).norm() / want.norm())

    if SWEEP:
        times = {f"{bm}x{bn}": round(bench(lambda: gated_act_backward(g, x, up, m, "rational", a, b, block_m=bm,
                                                                      block_n=bn)), 1)
                 for bm in (4, 8, 16) for bn in (64, 128, 256)}
        print(json.dumps({"rational-glu bwd tiles us": times, "shape": list(x.shape)}), file=sys.stderr, flush=True)
    yield "rational-glu+mult fwd", 3 * size, lambda: gated_act_forward(x, up, m, "rational", a, b), \
        lambda: gated_act_reference(x, up, m, "rational", a, b), \
        lambda: compiled(x, up, m, "rational", a, b), check
    yield "rational-glu+mult fwd+bwd", 8 * size, triton_train, train(gated_act_reference), train(compiled), check


def _knots(width: int, device) -> torch.Tensor:
    """Per-channel knot vectors (width, G+2k+1): a uniform grid on [-2, 2] stretched a little per channel."""
    step = 4.0 / SPLINE_GRID
    base = -2.0 + step * torch.arange(-SPLINE_ORDER, SPLINE_GRID + SPLINE_ORDER + 1, device=device)
    return base[None, :] * (1.0 + 0.2 * torch.rand(width, 1, device=device))


def bspline_cases(x):
    """B-spline bases (G=5, k=3, per-channel knots): forward, forward+backward, and a KANLinear forward."""
    rows, width = x.shape
    knots = _knots(width, x.device)
    nb = SPLINE_GRID + SPLINE_ORDER
    g = torch.randn(rows, width, nb, device=x.device, dtype=x.dtype)
    compiled = torch.compile(bspline_basis_reference, dynamic=False)
    size = x.numel() * x.element_size()

    def check():
        want = bspline_basis_reference(x.float(), knots, SPLINE_ORDER)
        got = bspline_basis_forward(x, knots, SPLINE_ORDER).float()
        return float((got - want).norm() / want.norm())

    def train(fn):
        def run():
            xx = x.detach().requires_grad_()
            fn(xx, knots, SPLINE_ORDER).backward(g)
        return run

    def triton_train():
        bspline_basis_forward(x, knots, SPLINE_ORDER)
        bspline_basis_backward(g, x, knots, SPLINE_ORDER)

    if SWEEP:
        tiles = ((16, 32), (8, 64), (32, 32), (16, 64), (8, 32))
        times = {f"{bm}x{bc}": [round(bench(lambda: bspline_basis_forward(x, knots, SPLINE_ORDER, block_m=bm,
                                                                           block_c=bc)), 1),
                                round(bench(lambda: bspline_basis_backward(g, x, knots, SPLINE_ORDER, block_m=bm,
                                                                           block_c=bc)), 1)]
                 for bm, bc in tiles}
        print(json.dumps({"bspline tiles [fwd, bwd] us": times, "shape": list(x.shape)}), file=sys.stderr, flush=True)
    # forward reads x and writes G+k bases per element; backward reads x and the bases' gradient, writes dx.
    yield "bspline basis G5 k3 fwd", size * (1 + nb), lambda: bspline_basis_forward(x, knots, SPLINE_ORDER), \
        lambda: bspline_basis_reference(x, knots, SPLINE_ORDER), lambda: compiled(x, knots, SPLINE_ORDER), check
    yield "bspline basis G5 k3 fwd+bwd", size * (3 + 2 * nb), triton_train, train(bspline_basis_reference), \
        train(compiled), check
    if width > KAN_LAYER_UP_TO:
        return
    # efficient-kan's KANLinear width -> width in bf16: silu(x) @ base_w + bases @ spline_w (+ bias).
    base_w = torch.randn(width, width, device=x.device, dtype=x.dtype) / width**0.5
    spline_w = torch.randn(width, width * nb, device=x.device, dtype=x.dtype) / (width * nb) ** 0.5
    bias = torch.zeros(width, device=x.device, dtype=x.dtype)

    def layer_reference(v):
        bases = bspline_basis_reference(v, knots, SPLINE_ORDER).flatten(-2)
        return F.linear(F.silu(v), base_w, bias) + F.linear(bases, spline_w)

    def layer_triton(v):
        bases = bspline_basis_forward(v, knots, SPLINE_ORDER).flatten(-2)
        return F.linear(F.silu(v), base_w, bias) + F.linear(bases, spline_w)

    compiled_layer = torch.compile(layer_reference, dynamic=False)

    def check_layer():
        want = layer_reference(x).float()
        return float((layer_triton(x).float() - want).norm() / want.norm())

    yield f"bspline KANLinear {width}->{width} fwd", size * 2 + spline_w.numel() * 2 + base_w.numel() * 2, \
        lambda: layer_triton(x), lambda: layer_reference(x), lambda: compiled_layer(x), check_layer


def kron_factors(n: int) -> tuple[int, int]:
    """(n1, n2) with n1·n2 = n, n1 ≤ n2 and n1 the largest divisor up to √n (FlatQuant's get_decompose_dim)."""
    n1 = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return n1, n // n1


def kron_cases(x):
    """FlatQuant's Kronecker transform (n1 × n2 ≈ √n × √n) + per-token int4 (clip 0.9) and int8 fake quant."""
    rows, width = x.shape
    n1, n2 = kron_factors(width)
    p1 = torch.linalg.qr(torch.randn(n1, n1, device=x.device))[0] * (1 + 0.1 * torch.rand(n1, device=x.device))
    p2 = torch.linalg.qr(torch.randn(n2, n2, device=x.device))[0]
    compiled = torch.compile(kron_quant_reference, dynamic=False)
    nbytes = 2 * x.numel() * x.element_size()

    def check(bits, sym, clip):
        def run():
            want = kron_quant_reference(x, p1, p2, bits, sym, clip).float()
            got = kron_quant_forward(x, p1, p2, bits, sym, clip).float()
            return float((got - want).norm() / want.norm())
        return run

    if SWEEP:
        variants = {f"{prec} t{t}": dict(precision=prec, tokens=t) for prec in ("tf32x3", "tf32", "ieee")
                    for t in (4, 16, 64)}
        times = {k: round(bench(lambda: kron_quant_forward(x, p1, p2, 4, True, 0.9, **v)), 1)
                 for k, v in variants.items()}
        print(json.dumps({"kron variants": times, "shape": list(x.shape), "n1xn2": [n1, n2]}), file=sys.stderr,
              flush=True)
    for bits, sym, clip, label in ((4, True, 0.9, "int4 sym clip0.9"), (8, False, 1.0, "int8 asym")):
        yield f"kron {n1}x{n2} + {label} fwd", nbytes, \
            lambda b=bits, s=sym, c=clip: kron_quant_forward(x, p1, p2, b, s, c), \
            lambda b=bits, s=sym, c=clip: kron_quant_reference(x, p1, p2, b, s, c), \
            lambda b=bits, s=sym, c=clip: compiled(x, p1, p2, b, s, c), check(bits, sym, clip)


def hadamard_cases(x):
    """Block-Hadamard(128) rotation + int8 per-token quantisation (codes + scales)."""
    compiled = torch.compile(hadamard_quant_reference, dynamic=False)

    def check():
        want_q, want_s = hadamard_quant_reference(x, 128)
        got_q, got_s = hadamard_quant_forward(x, 128)
        return float(((got_q.float() * got_s) - (want_q.float() * want_s)).norm() / (want_q.float() * want_s).norm())

    nbytes = x.numel() * (x.element_size() + 1) + 4 * x.shape[0]
    if SWEEP:
        variants = {f"row nw{w}": dict(num_warps=w) for w in (4, 8, 16)}
        variants.update({f"loop bm{m}": dict(row_loop=True, block_m=m) for m in (16, 32, 64)})
        times = {k: round(bench(lambda: hadamard_quant_forward(x, 128, **v)), 1) for k, v in variants.items()}
        print(json.dumps({"hadamard variants": times, "shape": list(x.shape)}), file=sys.stderr, flush=True)
    yield "hadamard128+int8 quant", nbytes, lambda: hadamard_quant_forward(x, 128), \
        lambda: hadamard_quant_reference(x, 128), lambda: compiled(x, 128), check


def pack_int4_g128(w):
    """(codes, step, zero) of ``w`` (out, in) in passes/quant's packed format: symmetric int4, groups of 128."""
    rows = w.float().reshape(-1, 128)
    step = (rows.abs().amax(1, keepdim=True) / 7).clamp_min(1e-5)
    codes = (torch.clamp(torch.round(rows * (1.0 / step)), -8, 7) + 8).to(torch.uint8).reshape(-1, 2)
    zero = torch.full_like(step, 8, dtype=torch.int16)
    return (codes[:, 0] | (codes[:, 1] << 4)).contiguous(), step, zero


def w4a16_rows(tokens_list=(1, 16), fin=4096, fout=11008, sweep=False) -> list[dict]:
    """W4A16 g128 linear at decode sizes, against bf16 ``F.linear`` as well as eager/compiled reference."""
    w = torch.randn(fout, fin, device="cuda", dtype=torch.bfloat16) * 0.02
    codes, step, zero = pack_int4_g128(w)
    compiled = torch.compile(w4a16_linear_reference, dynamic=False)
    out = []
    for tokens in tokens_list:
        x = torch.randn(tokens, fin, device="cuda", dtype=torch.bfloat16)
        wq = w4a16_linear_reference(torch.eye(fin, device="cuda", dtype=torch.bfloat16), codes, step, zero, None,
                                    fout, fin).t().contiguous()  # the dequantised weight, for F.linear
        want = torch.nn.functional.linear(x, wq).float()
        got = w4a16_linear_forward(x, codes, step, zero, None, fout, fin).float()
        row = {"kernel": f"w4a16 g128 {fin}->{fout}", "shape": f"{tokens}x{fin}",
               "clone_us": bench(lambda: codes.clone()),
               "error": float((got - want).norm() / want.norm())}
        row["triton_us"] = bench(lambda: w4a16_linear_forward(x, codes, step, zero, None, fout, fin))
        row["eager_us"] = bench(lambda: w4a16_linear_reference(x, codes, step, zero, None, fout, fin))
        row["compile_us"] = bench(lambda: compiled(x, codes, step, zero, None, fout, fin))
        row["bf16_linear_us"] = bench(lambda: torch.nn.functional.linear(x, wq))
        row["gbps"] = (codes.numel() + step.numel() * 6 + x.numel() * 2 + tokens * fout * 2) / row["triton_us"] / 1e3
        if sweep:
            row["tiles"] = {f"n{bn}k{bk}s{sk}": round(bench(lambda: w4a16_linear_forward(
                x, codes, step, zero, None, fout, fin, block_n=bn, block_k=bk, split_k=sk)), 1)
                for bn in (32, 64, 128) for bk in (64, 128) for sk in (1, 4)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return out


def sweep_rational_blocks(x) -> list[dict]:
    """Forward time of the rational kernel for a few tile shapes (to choose the defaults)."""
    a = torch.randn(6, device=x.device)
    b = torch.randn(GROUPS, 4, device=x.device)
    rows = []
    for bm, bn in [(16, 128), (32, 128), (64, 128), (32, 256), (64, 256), (128, 64)]:
        t = bench(lambda: group_rational_forward(x, a, b, block_m=bm, block_n=bn))
        tb = bench(lambda: group_rational_backward(x, x, a, b, block_m=bm, block_n=bn))
        rows.append({"block_m": bm, "block_n": bn, "fwd_us": t, "bwd_us": tb})
    return rows


def main() -> None:
    """Run every kernel at every shape; print a table; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["8192x4096", "8192x14336"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true", help="also time a few rational / W4A16 tile shapes")
    parser.add_argument("--only", nargs="*", default=None, help="run only kernels whose name contains one of these")
    args = parser.parse_args()
    global SWEEP
    SWEEP = args.sweep
    torch.manual_seed(0)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "rows": [], "sweep": {}}
    for shape in args.shapes:
        rows, width = map(int, shape.split("x"))
        x = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
        clone_us = bench(lambda: x.clone())
        if args.sweep and not args.only:
            results["sweep"][shape] = sweep_rational_blocks(x)
        for cases in (rational_cases(x), quant_cases(x), gated_cases(x), rational_gated_cases(x), hadamard_cases(x),
                      bspline_cases(x), kron_cases(x)):
            for name, nbytes, fast, eager, compiled, check in cases:
                if args.only and not any(o in name for o in args.only):
                    continue
                row = {"kernel": name, "shape": shape, "clone_us": clone_us, "error": check()}
                row["triton_us"], row["eager_us"], row["compile_us"] = bench(fast), bench(eager), bench(compiled)
                row["gbps"] = nbytes / row["triton_us"] / 1e3
                results["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if not args.only or any("w4a16" in o for o in args.only):
        results["rows"] += w4a16_rows(sweep=args.sweep)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"{results['gpu']}, torch {results['torch']}, triton {results['triton']}, bf16, medians of do_bench")
    print("| kernel | shape | µs | GB/s | ×clone | eager/triton | compile/triton | rel.err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['kernel']} | {r['shape']} | {r['triton_us']:.1f} | {r['gbps']:.0f} | "
              f"{r['triton_us'] / r['clone_us']:.2f} | {r['eager_us'] / r['triton_us']:.1f} | "
              f"{r['compile_us'] / r['triton_us']:.2f} | {r['error']:.1e} |")
    for r in results["rows"]:
        if "bf16_linear_us" in r:
            speedup = r["bf16_linear_us"] / r["triton_us"]
            print(f"{r['kernel']} at {r['shape']}: {speedup:.2f}x the speed of bf16 F.linear"
                  + (f"; tiles {r['tiles']}" if "tiles" in r else ""))
    for shape, sweep in results["sweep"].items():
        best = min(sweep, key=lambda s: s["fwd_us"])
        bestb = min(sweep, key=lambda s: s["bwd_us"])
        print(f"rational tiles at {shape}: best fwd {best['block_m']}x{best['block_n']} {best['fwd_us']:.1f} µs; "
              f"best bwd {bestb['block_m']}x{bestb['block_n']} {bestb['bwd_us']:.1f} µs")


if __name__ == "__main__":
    main()
