"""KAN family: the ``kan`` pass (KAT / KAN structures with group-rational or B-spline functions) and its layers."""

from surgeon.passes.kan.kan_pass import KAN, KANPass
from surgeon.passes.kan.layers import (BSplineKANLinear, GroupBSpline, GroupRational, PreActivated,
                                       RationalKANLinear)

__all__ = ["KAN", "KANPass", "BSplineKANLinear", "GroupBSpline", "GroupRational", "PreActivated",
           "RationalKANLinear"]
