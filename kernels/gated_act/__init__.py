"""Fused gated activation (SwiGLU / GeGLU / group-rational gate) with an optional per-channel multiplier:
``surgeon::gated_act``."""

from .reference import ACTS, gated_act_backward_reference, gated_act_reference

__all__ = ["ACTS", "gated_act_backward_reference", "gated_act_reference"]
