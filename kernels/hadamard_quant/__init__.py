"""Block-Hadamard rotation + int8 symmetric per-token quantisation in one kernel: ``surgeon::hadamard_quant``."""

from .reference import hadamard_matrix, hadamard_quant_reference

__all__ = ["hadamard_matrix", "hadamard_quant_reference"]
