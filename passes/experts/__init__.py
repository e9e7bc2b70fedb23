"""FFN → experts passes: ``moefy`` (MoEfication) and ``mofme`` (feature-modulated experts)."""

from surgeon.passes.experts.layers import ExpertFFN, FeatureModulated
from surgeon.passes.experts.moefy import Moefy, MoefyPass
from surgeon.passes.experts.mofme import Mofme, MofmePass

__all__ = ["ExpertFFN", "FeatureModulated", "Moefy", "MoefyPass", "Mofme", "MofmePass"]
