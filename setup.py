"""Package layout: the top-level folders install as ``surgeon``, ``surgeon.passes``,
``surgeon.kernels`` and ``surgeon.cli`` (DESIGN.md §4), so no generic names land in site-packages."""
from setuptools import find_packages, setup

MAPPED = {"surgeon": "surgeon", "surgeon.passes": "passes", "surgeon.kernels": "kernels", "surgeon.cli": "cli"}


def _packages() -> list[str]:
    found = []
    for name, folder in MAPPED.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


setup(packages=_packages(), package_dir=MAPPED)
