"""Pass infrastructure: typed configs, the registry, recipes, the manager and certification."""

from surgeon.pipeline.certify import Certificate
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.manager import apply, report, run_step
from surgeon.pipeline.recipe import Recipe
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass, registered_passes
from surgeon.pipeline.report import PassReport

__all__ = ["Certificate", "Found", "PassConfig", "PassContext", "PassHandler", "PassReport", "Recipe", "Site",
           "apply", "register_pass", "registered_passes", "report", "run_step"]
