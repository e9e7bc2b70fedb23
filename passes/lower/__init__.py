"""``lower``: swap layers that surgeon's passes create for thin modules calling ``surgeon::`` kernels."""

from surgeon.passes.lower.layers import (LoweredBSplineKANLinear, LoweredGroupBSpline, LoweredGroupRational,
                                         LoweredQuantizer)
from surgeon.passes.lower.lower_pass import Lower, LowerPass
from surgeon.passes.lower.table import ROWS, Row  # noqa: F401 - importable as surgeon.passes.lower.ROWS

# Re-exported as surgeon.passes.<name>; the table stays under surgeon.passes.lower (generic names).
__all__ = ["Lower", "LowerPass", "LoweredBSplineKANLinear", "LoweredGroupBSpline", "LoweredGroupRational",
           "LoweredQuantizer"]
