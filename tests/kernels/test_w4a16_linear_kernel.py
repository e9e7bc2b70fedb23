"""W4A16 linear Triton kernel (CPU interpreter) against the reference and passes/quant's PackedLinear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgeon.kernels.w4a16_linear.op import w4a16_linear
from surgeon.kernels.w4a16_linear.reference import w4a16_linear_reference
from surgeon.kernels.w4a16_linear.triton_kernel import w4a16_linear_forward
from surgeon.passes.quant.layers import QuantLinear
from surgeon.passes.quant.pack import pack_linear


def _packed(in_features, out_features, spec, bias=True, seed=0):
    torch.manual_seed(seed)
    holder = nn.Module()
    holder.lin = QuantLinear(in_features, out_features, bias, weight=spec, input="none")
    with torch.no_grad():
        holder.lin.weight.normal_()
        if bias:
            holder.lin.bias.normal_()
    pack_linear(holder, "lin")
    return holder.lin


# (tokens, in, out, spec): decode-sized and odd shapes, odd `in` (a byte straddles two weight rows)
CASES = [(1, 64, 48, "int4-asym-g16"), (5, 96, 40, "int4-sym-channel"), (19, 33, 17, "int4-asym-tensor"),
         (3, 256, 70, "int4-sym-g128"), (2, 64, 20, "int4-asym-g32")]  # channel, g128, g32: fast kernel


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("tokens,fin,fout,spec", CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("generic,split_k", [(False, 1), (True, 1), (False, 3)])
def test_matches_reference(tokens, fin, fout, spec, bias, dtype, tol, generic, split_k):
    layer = _packed(fin, fout, spec, bias=bias, seed=tokens)
    x = torch.randn(tokens, fin).to(dtype)
    b = layer.bias.detach().to(dtype) if bias else None
    out = torch.full((tokens, fout), float("nan"), dtype=dtype)
    w4a16_linear_forward(x, layer.codes, layer.step, layer.zero, b, fout, fin, block_m=16, block_n=16,
                         block_k=32, out=out, generic=generic, split_k=split_k)
    want = w4a16_linear_reference(x, layer.codes, layer.step, layer.zero, b, fout, fin).float()
    assert not out.isnan().any()
    rel = (out.float() - want).norm() / want.norm()
    assert rel <= tol, rel


@pytest.mark.parametrize("tokens,fin,fout,spec", CASES)
def test_reference_equals_packed_linear(tokens, fin, fout, spec):
    layer = _packed(fin, fout, spec, seed=1)
    x = torch.randn(2, tokens, fin)
    want = layer(x)
    got = w4a16_linear(x, layer.codes, layer.step, layer.zero, layer.bias, fout, fin)
    assert torch.equal(got, want)
    assert torch.allclose(w4a16_linear_forward(x, layer.codes, layer.step, layer.zero, layer.bias, fout, fin,
                                               block_n=16, block_k=32), want, rtol=1e-5, atol=1e-5)


def test_fast_kernel_is_taken_where_aligned():
    from surgeon.kernels.w4a16_linear.triton_kernel import aligned

    assert aligned(256, 128, 32) and aligned(64, 64 * 20, 32) and aligned(96, 96, 32)
    assert not aligned(33, 33 * 17, 32) and not aligned(64, 16, 32)
