"""Block-Hadamard + int8 quantisation Triton kernel (CPU interpreter) against the torch reference."""

from __future__ import annotations

import math

import pytest
import torch

from surgeon.kernels.hadamard_quant.op import hadamard_quant
from surgeon.kernels.hadamard_quant.reference import (
    hadamard_matrix,
    hadamard_quant_reference,
    hadamard_rotate_reference,
)
from surgeon.kernels.hadamard_quant.triton_kernel import hadamard_quant_forward

CASES = [(1, 16, 16), (19, 96, 32), (37, 256, 128), (5, 384, 64)]  # (rows, width, block): odd rows


def _x(rows, width, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=gen)
    x[:, 3] *= 40  # an outlier channel, what the rotation is for
    return x.to(dtype)


def test_hadamard_matrix_is_orthogonal_and_symmetric():
    for b in (16, 32, 64, 128):
        h = hadamard_matrix(b)
        assert torch.equal(h, h.t()) and torch.equal(h @ h, b * torch.eye(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,width,block", CASES)
@pytest.mark.parametrize("row_loop", [False, True])  # one row per program, and the looped kernel
def test_forward_matches_reference(rows, width, block, dtype, row_loop):
    x = _x(rows, width, dtype, seed=rows + block)
    out = torch.full((rows, width), -77, dtype=torch.int8)  # a code the kernel can write only at random
    out_scale = torch.full((rows, 1), float("nan"))
    q, s = hadamard_quant_forward(x, block, block_m=16, out=out, out_scale=out_scale, row_loop=row_loop)
    want_q, want_s = hadamard_quant_reference(x, block)
    assert not out_scale.isnan().any()
    assert torch.allclose(s, want_s, rtol=1e-6, atol=0)
    diff = (q.int() - want_q.int()).abs()
    # Codes agree except (by at most one) where the two summation orders straddle a rounding boundary.
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    # The poison value is a legal code: check it appears only where the reference has it too.
    assert ((q == -77) <= (want_q.int() - (-77)).abs().le(1)).all()
    deq = q.float() * s
    rot = hadamard_rotate_reference(x, block)
    assert ((deq - rot).abs() <= 0.5 * s + 1e-6 * rot.abs()).all()


def test_large_bf16_values_do_not_overflow_the_float16_dot():
    x = _x(16, 64, torch.float32, seed=1)
    x[2] *= 1e6  # far beyond float16's range
    x = x.to(torch.bfloat16)
    want_q, want_s = hadamard_quant_reference(x, 32)
    for row_loop in (False, True):
        q, s = hadamard_quant_forward(x, 32, block_m=16, row_loop=row_loop)
        assert torch.allclose(s, want_s, rtol=1e-6) and (q.int() - want_q.int()).abs().max() <= 1


def test_rotation_is_norm_preserving_and_op_runs_on_cpu():
    x = _x(6, 128, torch.float32, seed=2)
    y = hadamard_rotate_reference(x, 64)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-5)
    q, s = hadamard_quant(x.reshape(2, 3, 128), 64)
    want_q, want_s = hadamard_quant_reference(x, 64)
    assert torch.equal(q.reshape(6, 128), want_q) and torch.equal(s.reshape(6, 1), want_s)
    assert math.isclose(float(y.abs().amax()), float(want_s.max() * 127), rel_tol=1e-6)


def test_bad_blocks_are_refused():
    x = torch.randn(4, 96)
    with pytest.raises(ValueError):
        hadamard_quant_forward(x, 8)  # below the tensor-core tile
    with pytest.raises(ValueError):
        hadamard_quant_forward(x, 64)  # does not divide 96
