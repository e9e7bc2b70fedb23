"""surgeon's passes, one package per method family; importing this registers them all."""

from surgeon.passes.activations import SwapActivation, register_activation
from surgeon.passes.norm import FoldNorm

__all__ = ["FoldNorm", "SwapActivation", "register_activation"]
