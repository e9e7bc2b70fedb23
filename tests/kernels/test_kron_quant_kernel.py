"""FlatQuant's fused Kronecker transform + per-token fake-quant kernel (CPU interpreter) against the reference."""

from __future__ import annotations

import pytest
import torch

from surgeon.kernels.kron_quant.op import kron_quant
from surgeon.kernels.kron_quant.reference import kron_quant_reference, kron_transform_reference
from surgeon.kernels.kron_quant.triton_kernel import kron_quant_forward
from surgeon.passes.quant import formats as F

# (rows, n1, n2): odd token counts; n1, n2 below and at the 16-wide dot tile, not powers of two.
SHAPES = [(37, 8, 12), (5, 16, 6), (19, 20, 5)]
SETTINGS = [(4, True, 1.0), (8, True, 0.9), (4, False, 0.8), (8, False, 1.0)]  # (bits, symmetric, clip)


def _inputs(rows, n1, n2, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n1 * n2, generator=gen)
    x[:, 3] *= 20  # an outlier channel, what the transform is for
    p1 = torch.eye(n1) + 0.3 * torch.randn(n1, n1, generator=gen) / n1**0.5
    p2 = torch.eye(n2) + 0.3 * torch.randn(n2, n2, generator=gen) / n2**0.5
    return x.to(dtype), p1, p2


def _step(y: torch.Tensor, bits: int, symmetric: bool, clip: float) -> torch.Tensor:
    step, _ = F.uniform_params(clip * y.amin(-1, keepdim=True), clip * y.amax(-1, keepdim=True), bits, symmetric)
    return step


def test_transform_is_the_kronecker_product():
    x, p1, p2 = _inputs(7, 4, 6, seed=0)
    want = x.double() @ torch.kron(p1.double(), p2.double())
    assert torch.allclose(kron_transform_reference(x, p1, p2).double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits,symmetric,clip", SETTINGS)
def test_reference_is_the_token_quantizer_of_passes_quant(bits, symmetric, clip):
    x, p1, p2 = _inputs(9, 4, 8, seed=1)
    y = kron_transform_reference(x, p1, p2)
    lo, hi = clip * y.amin(-1, keepdim=True), clip * y.amax(-1, keepdim=True)
    step, zero = F.uniform_params(lo, hi, bits, symmetric)
    want = F.fake_uniform(y, step, zero, *F.int_range(bits, symmetric))
    assert torch.equal(kron_quant_reference(x, p1, p2, bits, symmetric, clip), want)


@pytest.mark.parametrize("bits,symmetric,clip", SETTINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference_and_writes_every_element(shape, bits, symmetric, clip):
    rows, n1, n2 = shape
    x, p1, p2 = _inputs(rows, n1, n2, seed=n1 + bits)
    out = torch.full_like(x, float("nan"))
    got = kron_quant_forward(x, p1, p2, bits, symmetric, clip, tokens=4, out=out)
    want = kron_quant_reference(x, p1, p2, bits, symmetric, clip)
    assert not out.isnan().any() and got.data_ptr() == out.data_ptr()
    # Codes agree except where the two float32 matmul sums straddle a rounding boundary: then by one step.
    step = _step(kron_transform_reference(x, p1, p2), bits, symmetric, clip)
    diff = (got - want).abs()
    off = diff > 1e-6 * step
    assert off.float().mean() <= 1e-3
    assert torch.allclose(diff[off], step.expand_as(diff)[off], rtol=1e-4)


@pytest.mark.parametrize("bits,symmetric,clip", SETTINGS[1:3])
def test_unfused_path_for_large_tiles_matches_reference(bits, symmetric, clip):
    # Tiles too large for shared memory take torch's float32 transform, then the kernel's quantisation:
    # the transform is the reference's own, so the result is exact.
    x, p1, p2 = _inputs(13, 6, 20, seed=7)
    out = torch.full_like(x, float("nan"))
    got = kron_quant_forward(x, p1, p2, bits, symmetric, clip, fused=False, out=out)
    assert not out.isnan().any()
    assert torch.equal(got, kron_quant_reference(x, p1, p2, bits, symmetric, clip))


@pytest.mark.parametrize("dtype,ulp", [(torch.bfloat16, 2**-7), (torch.float16, 2**-10)])
def test_16_bit_inputs_are_returned_in_their_dtype(dtype, ulp):
    x, p1, p2 = _inputs(21, 8, 16, seed=4, dtype=dtype)
    out = torch.full_like(x, float("nan"))
    got = kron_quant_forward(x, p1, p2, 8, True, 1.0, out=out)
    want = kron_quant_reference(x.float(), p1, p2, 8, True, 1.0)  # the float32 values before the final cast
    assert got.dtype == dtype and not out.isnan().any()
    # One 16-bit ulp from the final cast (the interpreter truncates where the GPU rounds to nearest), except
    # where the float32 sums straddle a rounding boundary.
    off = (got.float() - want).abs() > want.abs() * ulp
    assert off.float().mean() <= 1e-3


def test_op_on_cpu_autograd_and_export():
    x, p1, p2 = _inputs(6, 4, 8, seed=5)
    leaves = [t.clone().requires_grad_() for t in (x, p1, p2)]
    y = kron_quant(*leaves, 8, False, 0.9)
    assert torch.equal(y, kron_quant_reference(x, p1, p2, 8, False, 0.9))
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, grad)
    ref_leaves = [t.clone().requires_grad_() for t in (x, p1, p2)]
    want = torch.autograd.grad(kron_quant_reference(*ref_leaves, 8, False, 0.9), ref_leaves, grad)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert all(g.abs().sum() > 0 for g in got)  # straight-through rounding: every input gets a gradient

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p1, self.p2 = torch.nn.Parameter(p1), torch.nn.Parameter(p2)

        def forward(self, v):
            return kron_quant(v, self.p1, self.p2, 4, True, 1.0)

    exported = torch.export.export(Flat(), (x,))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets == ["surgeon.kron_quant.default"]


def test_bad_arguments_name_the_problem():
    x, p1, p2 = _inputs(2, 4, 8, seed=6)
    with pytest.raises(ValueError, match="n1·n2"):
        kron_quant_forward(x, p1, p1, 4)
    with pytest.raises(ValueError, match="clip ratio"):
        kron_quant_reference(x, p1, p2, 4, True, 1.5)


def test_separate_lower_and_upper_clips_match_the_reference():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 48, generator=gen)
    p1, p2 = torch.randn(6, 6, generator=gen), torch.randn(8, 8, generator=gen)
    for symmetric in (True, False):
        want = kron_quant_reference(x, p1, p2, 4, symmetric, 0.7, 0.95)
        assert not torch.equal(want, kron_quant_reference(x, p1, p2, 4, symmetric, 0.7))  # clip_hi matters
        out = torch.full_like(x, float("nan"))
        got = kron_quant_forward(x, p1, p2, 4, symmetric, 0.7, 0.95, fused=False, out=out)  # exact path
        assert not out.isnan().any() and torch.equal(got, want)
        # the reference itself: lo = 0.7·min, hi = 0.95·max of y = x·(P1 ⊗ P2), per token
        y = x @ torch.kron(p1, p2)
        lo, hi = 0.7 * y.amin(-1, keepdim=True), 0.95 * y.amax(-1, keepdim=True)
        if symmetric:
            step = torch.maximum(lo.abs(), hi.abs()) / 7
            q = torch.clamp(torch.round(y * (1 / step)), -8, 7) * step
        else:
            step = (hi - lo) / 15
            zero = torch.round(-lo / step)
            q = (torch.clamp(torch.round(y * (1 / step)) + zero, 0, 15) - zero) * step
        torch.testing.assert_close(want, q, rtol=0, atol=float(step.max()) * 1.01)
