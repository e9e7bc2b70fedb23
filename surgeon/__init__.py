"""surgeon: a model-surgery compiler for PyTorch.

Load a model, capture it into torch.fx scopes, apply declarative rewrite passes, certify what each
did to the numbers, and keep the result::

    import surgeon
    model = surgeon.load_model("tiny-llama")
    model = surgeon.apply(model, [surgeon.passes.FoldNorm(), surgeon.passes.SwapActivation(to="gelu")])
    for step in surgeon.report(model):
        print(step.text())
"""

from surgeon.capture import Capture, capture
from surgeon.errors import SurgeonError
from surgeon.inputs import example_inputs
from surgeon.loading import load_model
from surgeon.persist import load, save, verify
from surgeon.pipeline import PassConfig, PassReport, Recipe, apply, report
from surgeon.zoo import zoo_names

# The public API registers the passes; the core modules above never import them (DESIGN.md §4).
from surgeon import passes  # noqa: E402  isort: skip

__version__ = "0.1.0"

__all__ = [
    "Capture",
    "PassConfig",
    "PassReport",
    "Recipe",
    "SurgeonError",
    "apply",
    "capture",
    "example_inputs",
    "load",
    "load_model",
    "passes",
    "report",
    "save",
    "verify",
    "zoo_names",
]
