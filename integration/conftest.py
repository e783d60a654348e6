"""Fixtures for the integration tests: a world-readable work directory and a chapiteau factory.

These tests run as root (CI does), because they check what only root can:
port 80, the switch to the service user, capabilities.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.harness import EXAMPLES, Chapiteau

SERVICE_USER = "nobody"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests run as root (as in CI)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the service user can read, holding a copy of the example app."""
    path = Path(tempfile.mkdtemp(prefix="chapiteau-test-"))
    path.chmod(0o755)
    for name in ("hello_wsgi.py",):
        shutil.copy(EXAMPLES / name, path / name)
        (path / name).chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def chapiteau(workdir: Path) -> Iterator[Callable[..., Chapiteau]]:
    """Start chapiteau from an INI text; every process it started is killed afterwards."""
    started: list[Chapiteau] = []

    def start(config: str, *args: str) -> Chapiteau:
        instance = Chapiteau(workdir, config, args).start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.kill_everything()
