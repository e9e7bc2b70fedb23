"""Patterns over fx graphs (:mod:`.core`), structural module recognition, and the built-in patterns."""

from surgeon.patterns.core import (
    Match,
    MatchContext,
    NodeSpec,
    Pattern,
    anything,
    either,
    find,
    find_all,
    function,
    method,
    module,
)
from surgeon.patterns.library import (
    GATED_MLP,
    NORM_TO_LINEAR,
    SOFTMAX,
    MlpSite,
    NormSite,
    SoftmaxSite,
    activation,
    linear,
    mlp_sites,
    norm,
    norm_sites,
    plain_mlp,
    softmax_sites,
)
from surgeon.patterns.structure import LinearView, NormInfo, is_activation, is_linear, is_norm, linear_view, norm_info

__all__ = [
    "GATED_MLP", "NORM_TO_LINEAR", "SOFTMAX", "LinearView", "Match", "MatchContext", "MlpSite", "NodeSpec",
    "NormInfo", "NormSite", "Pattern", "SoftmaxSite", "activation", "anything", "either", "find", "find_all",
    "function", "is_activation", "is_linear", "is_norm", "linear", "linear_view", "method", "mlp_sites",
    "module", "norm", "norm_info", "norm_sites", "plain_mlp", "softmax_sites",
]
