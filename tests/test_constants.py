"""Tests for chapiteau.protocol.constants, the values every side shares."""

from __future__ import annotations

import tomllib
from pathlib import Path

from chapiteau.protocol.constants import VERSION


def test_the_version_is_the_packages_version():
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == VERSION
