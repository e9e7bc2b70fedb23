"""surgeon's passes, one package per method family; importing this registers them all.

Every family package found here is imported (so adding a family needs no edit to this file), and the
names each exports in ``__all__`` are re-exported: ``surgeon.passes.FoldNorm``, ``surgeon.passes.SwapActivation``.
"""

import importlib
import pkgutil

__all__: list[str] = []
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.ispkg:
        _family = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in getattr(_family, "__all__", []):
            globals()[_name] = getattr(_family, _name)
            __all__.append(_name)
