"""The integration tests run against chapiteau as installed from its wheel, whole.

`make test` installs the wheel (not editable) into a fresh virtualenv and runs
these tests with its Python, which is also the one that runs ``python -m
chapiteau.broker``. These checks fail when chapiteau comes from the checkout
instead (an editable install, or a folder on sys.path) and when a module of
the source tree is missing from the installed package.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig
from pathlib import Path

import pytest

import chapiteau

CHECKOUT = Path(__file__).resolve().parent.parent
# The source folders and the packages they install as (setup.py maps them).
FOLDERS = ("broker", "supervisor", "protocol", "ctl")
INSTALLED = Path(sysconfig.get_paths()["purelib"]).resolve() / "chapiteau"


def source_modules() -> list[str]:
    """The dotted name of every module and package in the checkout's source folders."""
    names = []
    for folder in FOLDERS:
        for path in (CHECKOUT / folder).rglob("*.py"):
            parts = path.relative_to(CHECKOUT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(("chapiteau", *parts)))
    return sorted(names)


def test_chapiteau_is_the_installed_package_not_the_checkout() -> None:
    locations = [Path(entry).resolve() for entry in chapiteau.__path__]
    assert locations == [INSTALLED], (
        f"{sys.executable} imports chapiteau from {locations}, not only from {INSTALLED}: "
        "the integration tests must run against the installed wheel (run `make test`)"
    )


@pytest.mark.parametrize("name", source_modules())
def test_every_source_module_is_installed(name: str) -> None:
    module = importlib.import_module(name)
    location = Path(module.__file__).resolve()
    assert location.is_relative_to(INSTALLED), f"{name} is imported from {location}"


def test_the_dashboard_page_is_installed() -> None:
    static = CHECKOUT / "ctl" / "web" / "static"
    names = sorted(path.name for path in static.iterdir())
    assert names and all((INSTALLED / "ctl" / "web" / "static" / name).is_file() for name in names)


def test_the_docs_and_examples_are_installed_beside_the_package() -> None:
    doc = Path(sysconfig.get_paths()["data"]) / "share" / "doc" / "chapiteau"
    wanted = {CHECKOUT / "README.md": doc / "README.md"}
    wanted |= {path: doc / path.name for path in (CHECKOUT / "docs").iterdir()}
    examples = CHECKOUT / "examples"
    wanted |= {
        path: doc / path.relative_to(CHECKOUT)
        for path in examples.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    missing = [
        str(path.relative_to(CHECKOUT)) for path, there in wanted.items() if not there.is_file()
    ]
    assert len(wanted) > 10 and missing == []
