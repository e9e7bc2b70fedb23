"""KAN family: ``kan`` (KAT / KAN / HQKAN structures with rational, B-spline, Fourier, TruKAN, DARUAN or S-KAN
selectable functions), ``kan_refine`` (grid extension, QKAN reps extension, S-KAN collapse) and ``karat``
(Fourier-KArAt: a learnable low-rank operator in place of attention softmax)."""

from surgeon.passes.kan.extra_layers import BasisKANLinear, GroupBasis, GroupDaruan, QKANLinear, Selectable
from surgeon.passes.kan.kan_pass import KAN, KANPass
from surgeon.passes.kan.karat import KArAt, KArAtPass
from surgeon.passes.kan.karat_layers import FourierKArAt
from surgeon.passes.kan.layers import (BSplineKANLinear, GroupBSpline, GroupRational, HQKANResidual,
                                       PreActivated, RationalKANLinear)
from surgeon.passes.kan.refine_pass import KANRefine, KANRefinePass

__all__ = ["KAN", "KANPass", "KANRefine", "KANRefinePass", "BSplineKANLinear", "GroupBSpline", "GroupRational",
           "PreActivated", "RationalKANLinear", "BasisKANLinear", "GroupBasis", "GroupDaruan", "QKANLinear",
           "Selectable", "KArAt", "KArAtPass", "FourierKArAt", "HQKANResidual"]
