"""What a saved model was built from, and rebuilding that base on the ``meta`` device.

A transformers model is described by its class name and its config (so a reload needs neither the
original directory nor the hub); the zoo name or directory it came from is kept for reference. Other
``nn.Module`` models cannot be rebuilt from data: loading them needs a freshly constructed ``base``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgeon.errors import SurgeonError


def describe_source(model: nn.Module) -> dict[str, Any]:
    """A JSON-able description from which :func:`rebuild_base` can build the model's structure."""
    origin = getattr(model, "surgeon_source", None)
    config = getattr(model, "config", None)
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        transformers = None
    cls_name = type(model).__name__
    if transformers is not None and isinstance(config, transformers.PretrainedConfig) and hasattr(
            transformers, cls_name):
        return {"kind": "transformers", "class": cls_name, "config": config.to_dict(),
                "attn_implementation": getattr(config, "_attn_implementation", None) or "eager",
                "origin": origin}
    return {"kind": "python", "class": f"{type(model).__module__}.{type(model).__qualname__}", "origin": origin}


def rebuild_base(source: dict[str, Any], base: nn.Module | None = None, *, where: str = "") -> nn.Module:
    """The base model's structure with parameters on ``meta`` (no memory), ready for replay and loading."""
    if base is not None:
        return base
    if source.get("kind") != "transformers":
        raise SurgeonError(f"the saved model is a plain {source.get('class')}, which cannot be rebuilt from data",
                           where=where, fix="Call surgeon.load(dir, base=YourModel(...)) with a fresh instance")
    import transformers

    try:
        config_cls = transformers.CONFIG_MAPPING[source["config"]["model_type"]]
        model_cls = getattr(transformers, source["class"])
    except (KeyError, AttributeError) as exc:
        raise SurgeonError(f"this transformers ({transformers.__version__}) has no {exc.args[0]!r}", where=where,
                           fix="Install the transformers version recorded in the manifest") from None
    config = config_cls.from_dict(dict(source["config"]))
    with torch.device("meta"):
        model = model_cls._from_config(config, attn_implementation=source.get("attn_implementation", "eager"))
    return model.eval()
