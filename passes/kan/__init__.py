"""KAN family: ``kan`` (KAT / KAN / HQKAN structures with rational, B-spline, Fourier, TruKAN, DARUAN or S-KAN
selectable functions) and ``kan_refine`` (grid extension, QKAN reps extension, S-KAN collapse)."""

from surgeon.passes.kan.extra_layers import BasisKANLinear, GroupBasis, GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.kan_pass import KAN, KANPass
from surgeon.passes.kan.layers import (BSplineKANLinear, GroupBSpline, GroupRational, PreActivated,
                                       RationalKANLinear)
from surgeon.passes.kan.refine_pass import KANRefine, KANRefinePass

__all__ = ["KAN", "KANPass", "KANRefine", "KANRefinePass", "BSplineKANLinear", "GroupBSpline", "GroupRational",
           "PreActivated", "RationalKANLinear", "BasisKANLinear", "GroupBasis", "GroupDaruan", "QKANLinear",
           "Selectable"]
