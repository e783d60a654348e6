"""Fixtures for the integration tests: a world-readable work directory and a chapiteau factory.

These tests run as root (CI does), because they check what only root can:
port 80, the switch to the service user, capabilities.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.harness import EXAMPLES, Chapiteau, free_port
from integration.zmq_clients import Control, Events

SERVICE_USER = "nobody"
BROKER_USER = "chapiteau-broker"
"""The broker's own account once it has bound (docs/security.md); created if missing."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests run as root (as in CI)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def broker_account() -> pwd.struct_passwd | None:
    """The broker's account, as the README tells operators to create it (idempotent)."""
    if os.geteuid() != 0:
        return None
    # Another test session may create it at the same moment: only the lookup decides.
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", BROKER_USER],
        capture_output=True,
        check=False,
    )
    return pwd.getpwnam(BROKER_USER)


def broker_directory(parent: Path, name: str = "run") -> Path:
    """A directory only the broker's account may write (where it can remove what it created)."""
    path = parent / name
    path.mkdir(mode=0o755)
    account = pwd.getpwnam(BROKER_USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    return path


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
    endpoints = Path(tempfile.mkdtemp(prefix="chapiteau-endpoints-"))
    endpoints.chmod(0o777)

    def start(config: str, *args: str, stdio_closed: bool = False, **launch: Any) -> Chapiteau:
        instance = Chapiteau(workdir, with_private_endpoints(config, endpoints), args)
        instance.start(stdio_closed, **launch)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.shut_down()
    shutil.rmtree(endpoints, ignore_errors=True)


def with_private_endpoints(config: str, directory: Path) -> str:
    """``config`` with ipc control/pubsub endpoints in ``directory`` where it names none.

    Circus's defaults are fixed TCP ports (5555, 5556), which daemons started by
    concurrent tests (or a real circusd in a benchmark) would fight over.
    """
    lines = "".join(
        f"{key} = ipc://{directory}/{key}.sock\n"
        for key in ("endpoint", "pubsub_endpoint")
        if not re.search(rf"^\s*{key}\s*[=:]", config, re.MULTILINE)
    )
    if "[circus]\n" in config:
        return config.replace("[circus]\n", "[circus]\n" + lines, 1)
    return f"[circus]\n{lines}\n{config}"


IGNORE_TERM = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(1000)
"""


class Daemon:
    """A running chapiteau with its endpoints and clients."""

    def __init__(self, tree, endpoint: str, pubsub: str) -> None:
        self.tree = tree
        self.endpoint = endpoint
        self.pubsub = pubsub
        self.control = Control(endpoint)

    def call(self, command: str, **properties: Any) -> dict:
        return self.control.call(command, **properties)

    def events(self) -> Events:
        events = Events(self.pubsub)
        time.sleep(0.3)  # a SUB misses what is published before it is connected
        return events

    def rewrite_config(self, watchers: str) -> None:
        head = self.tree.config_path.read_text().split("[watcher:", 1)[0]
        self.tree.config_path.write_text(head + watchers)


@pytest.fixture
def daemon(chapiteau, workdir: Path):
    """Start chapiteau with the given [watcher:*] sections; yields a factory."""
    (workdir / "ignore_term.py").write_text(IGNORE_TERM)
    (workdir / "ignore_term.py").chmod(0o644)
    started: list[Daemon] = []

    def start(watchers: str, circus: str = "", endpoint: str | None = None) -> Daemon:
        endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        pubsub = f"tcp://127.0.0.1:{free_port()}"
        config = (
            f"[broker]\nuser = nobody\n\n[circus]\nendpoint = {endpoint}\n"
            f"pubsub_endpoint = {pubsub}\n{circus}\n{watchers}"
        )
        tree = chapiteau(config)
        tree.wait_for("supervisor_ready")
        started.append(Daemon(tree, endpoint, pubsub))
        return started[-1]

    yield start
    for instance in started:
        instance.control.close()
