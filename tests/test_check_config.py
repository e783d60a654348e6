"""``chapiteau --check-config``: every problem of the broker's paths on its own line, nothing made.

Runs the broker's ``main`` in-process: the check binds, creates and starts
nothing, so there is nothing to clean up. The unsafe paths belong to nobody,
which needs root; the tests are skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.main import main
from tests.nobody import NOBODY, directory_of_nobody, reachable_directory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="gives directories to nobody: root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A root directory the service user can reach (so that the supervisor check passes)."""
    with reachable_directory("chapiteau-check-") as path:
        yield path


@pytest.fixture
def theirs(base: Path) -> Path:
    return directory_of_nobody(base / "theirs")


def check(base: Path, text: str, *args: str) -> int:
    config = base / "circus.ini"
    config.write_text(text)
    config.chmod(0o644)
    return main(["--check-config", *args, str(config)])


def test_a_safe_config_has_no_problem(base, capsys):
    text = f"[broker]\nuser = nobody\n\n[socket:app]\npath = {base}/app.sock\n"
    assert check(base, text, "--pidfile", f"{base}/app.pid") == 0
    assert capsys.readouterr().out == f"chapiteau: {base}/circus.ini: no problem found\n"
    assert sorted(p.name for p in base.iterdir()) == ["circus.ini"]


def test_every_unsafe_path_is_reported_and_nothing_is_made(base, theirs, capsys):
    text = f"""
[circus]
pidfile = {theirs}/chapiteau.pid
logoutput = {theirs}/chapiteau.log

[broker]
user = nobody
socket_path = {theirs}/run/broker.sock
runtime_directory = {theirs}/circus

[socket:app]
path = {theirs}/app.sock
"""
    assert check(base, text) == 1
    lines = capsys.readouterr().err.splitlines()
    writable = f"the directory {theirs} is writable by the service user 'nobody'"
    assert [line.split(": ", 2)[1] for line in lines] == [
        "[broker] socket_path",
        f"{base}/circus.ini:socket:app",
        "[broker] runtime_directory",
        "pid file",
        "log output",
    ]
    assert all(line.startswith("chapiteau: ") and writable in line for line in lines)
    assert list(theirs.iterdir()) == []


def test_a_config_the_service_user_can_write_is_reported(base, capsys):
    config = base / "circus.ini"
    config.write_text("[broker]\nuser = nobody\n")
    os.chown(config, NOBODY.pw_uid, 0)
    assert main(["--check-config", str(config)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"chapiteau: {config}: writable by the service user 'nobody'")


def test_a_config_mistake_is_reported(base, capsys):
    assert check(base, "[socket:app]\nport = http\n") == 1
    assert ":socket:app:port: 'http' is not an integer" in capsys.readouterr().err


def test_a_missing_socket_directory_is_reported(base, capsys):
    assert check(base, f"[broker]\nuser = nobody\n\n[socket:app]\npath = {base}/no/a.sock\n") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"cannot bind {base}/no/a.sock: the directory {base}/no does not exist" in line


def test_an_unknown_socket_owner_is_reported(base, capsys):
    assert check(base, f"[socket:app]\npath = {base}/a.sock\nowner = no-such-user\n") == 1
    assert ":socket:app:owner: 'no-such-user' does not exist" in capsys.readouterr().err
