"""Neuron-gating passes: ``dopamine`` (trainable per-neuron gates) and ``dopamine_harden``."""

from surgeon.passes.gating.dopamine import Dopamine, DopamineHarden, DopamineHardenPass, DopaminePass, gate_parameters
from surgeon.passes.gating.layers import GatedLinear, NeuronGate

__all__ = ["Dopamine", "DopamineHarden", "DopamineHardenPass", "DopaminePass", "GatedLinear", "NeuronGate",
           "gate_parameters"]
