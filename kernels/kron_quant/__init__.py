"""FlatQuant's online Kronecker transform + per-token fake quantisation in one kernel: ``surgeon::kron_quant``."""

from .reference import kron_quant_reference, kron_transform_reference

__all__ = ["kron_quant_reference", "kron_transform_reference"]
