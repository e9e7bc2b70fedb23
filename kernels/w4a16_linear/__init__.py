"""W4A16 linear: packed 4-bit weights dequantised in the GEMM's load path: ``surgeon::w4a16_linear``."""

from .reference import unpack_int4, w4a16_linear_reference

__all__ = ["unpack_int4", "w4a16_linear_reference"]
