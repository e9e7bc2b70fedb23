"""Rounding helpers shared by the Triton kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_half_even(v):
    """Round to the nearest integer, ties to even, like ``torch.round`` (written with ``floor``, which the
    CPU interpreter supports, unlike ``libdevice.rint``)."""
    f = tl.floor(v)
    d = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, tl.where(odd, f + 1.0, f)))
