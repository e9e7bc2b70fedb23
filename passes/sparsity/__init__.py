"""Activation-sparsity passes: ``topk`` (lazy neuron), ``teal``, ``wina`` and ``rsparse``."""

from surgeon.passes.sparsity.layers import ThresholdSparseLinear, TopKSparseLinear
from surgeon.passes.sparsity.threshold import RSparse, RSparsePass, Teal, TealPass, Wina, WinaPass, rsparse_budget
from surgeon.passes.sparsity.topk import TopK, TopKPass

__all__ = ["RSparse", "RSparsePass", "Teal", "TealPass", "ThresholdSparseLinear", "TopK", "TopKPass",
           "TopKSparseLinear", "Wina", "WinaPass", "rsparse_budget"]
