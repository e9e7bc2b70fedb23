"""FFN → experts passes: ``moefy`` (MoEfication), ``mofme`` (feature-modulated experts), ``mohd`` (hidden sub-dimensions)."""

from surgeon.passes.experts.layers import ExpertFFN, FeatureModulated, MohdFFN
from surgeon.passes.experts.moefy import Moefy, MoefyPass
from surgeon.passes.experts.mofme import Mofme, MofmePass
from surgeon.passes.experts.mohd import Mohd, MohdPass

__all__ = ["ExpertFFN", "FeatureModulated", "Moefy", "MoefyPass", "Mofme", "MofmePass", "Mohd", "MohdFFN", "MohdPass"]
