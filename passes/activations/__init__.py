"""Activation passes: ``swap_activation`` and the activation registry."""

from surgeon.passes.activations.registry import activation_names, make_activation, register_activation
from surgeon.passes.activations.swap import SwapActivation, SwapActivationPass

__all__ = ["SwapActivation", "SwapActivationPass", "activation_names", "make_activation", "register_activation"]
