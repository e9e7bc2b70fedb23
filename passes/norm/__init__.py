"""Norm passes: ``fold_norm``."""

from surgeon.passes.norm.fold import FoldNorm, FoldNormPass
from surgeon.passes.norm.layers import WeightlessNorm

__all__ = ["FoldNorm", "FoldNormPass", "WeightlessNorm"]
