"""Map the source folders to the ``chapiteau`` packages, finding every subpackage.

The top-level folders install under the ``chapiteau`` namespace so that they
never collide with other distributions (PyPI's ``supervisor`` owns that import
name). pyproject.toml holds everything else: its package discovery cannot add
a prefix to the names it finds, so the list is computed here.
"""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

FOLDERS = ("broker", "supervisor", "protocol", "ctl")


def packages(folder: str) -> list[str]:
    """``chapiteau.FOLDER`` and every directory below it (data-only ones, like a page's static
    files, included: setuptools warns about a directory it would leave out)."""
    below = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
    return [f"chapiteau.{folder}", *(f"chapiteau.{folder}.{sub}" for sub in below)]


setup(
    packages=[package for folder in FOLDERS for package in packages(folder)],
    package_dir={f"chapiteau.{folder}": folder for folder in FOLDERS},
)
