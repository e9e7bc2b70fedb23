"""Activation passes: ``swap_activation``, the activation registry and PolyCom/CRReLU activations."""

from surgeon.passes.activations.layers import CRReLU, PolyNorm, PolyReLU
from surgeon.passes.activations.registry import activation_names, make_activation, register_activation
from surgeon.passes.activations.swap import SwapActivation, SwapActivationPass

__all__ = ["CRReLU", "PolyNorm", "PolyReLU", "SwapActivation", "SwapActivationPass", "activation_names", "make_activation", "register_activation"]
