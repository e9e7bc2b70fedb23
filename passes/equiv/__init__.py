"""Equivalent transforms (smoothing, rotations, FlatQuant, OSTQuant): found from the graph, exact before quantization.

Passes: ``smooth`` (SmoothQuant/LET scales, folded or online), ``rotate`` (QuaRot/SpinQuant rotations),
``flat`` (FlatQuant Kronecker affine), ``ost`` (OSTQuant orthogonal + scaling). Regions come from
:mod:`.regions`; the transform layers are in :mod:`.layers`; ``calibrate_quant`` trains learnable ones.
"""

from surgeon.passes.equiv.flat import Flat, FlatPass
from surgeon.passes.equiv.layers import TransformedLinear
from surgeon.passes.equiv.ost import Ost, OstPass
from surgeon.passes.equiv.regions import InputGroup, Regions, find_regions
from surgeon.passes.equiv.rotate import Rotate, RotatePass
from surgeon.passes.equiv.smooth import Smooth, SmoothPass

__all__ = ["Flat", "FlatPass", "InputGroup", "Ost", "OstPass", "Regions", "Rotate", "RotatePass", "Smooth",
           "SmoothPass", "TransformedLinear", "find_regions"]
