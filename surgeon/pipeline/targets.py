"""One targeting vocabulary for every pass: path globs, ``re:`` regexes and module type names.

- ``model.layers.*.mlp`` — an fnmatch glob on the site's module path (``*`` also crosses dots);
- ``re:model\\.layers\\.(0|1)\\.mlp`` — a regular expression that must match the whole path;
- ``LlamaMLP`` — a class name: sites whose module is of that class (or a subclass of that name).
A site's path is documented by each pass (the MLP for ``swap_activation``, the norm for ``fold_norm``).
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

_GLOB_CHARS = set("*?[.")


def is_type_name(target: str) -> bool:
    """True when ``target`` reads as a class name rather than a path."""
    return target.isidentifier() and not (set(target) & _GLOB_CHARS) and target[:1].isupper()


def target_matches(target: str, path: str, module: nn.Module | None) -> bool:
    """Whether a site at ``path`` (whose module is ``module``) is selected by ``target``."""
    if target.startswith("re:"):
        return re.fullmatch(target[3:], path) is not None
    if is_type_name(target) and module is not None:
        return any(cls.__name__ == target for cls in type(module).__mro__)
    return fnmatch.fnmatchcase(path, target)


def check_target(target: str) -> str | None:
    """A problem with ``target`` (a bad regex), or None."""
    if target.startswith("re:"):
        try:
            re.compile(target[3:])
        except re.error as exc:
            return f"invalid regular expression {target[3:]!r}: {exc}"
    return None
