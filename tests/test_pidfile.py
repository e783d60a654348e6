"""The pidfile: the check (a live chapiteau, a live stranger, a dead pid), and its removal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.pidfile import PidfileError, check_pidfile, remove_pidfile, write_pidfile
from chapiteau.broker.privileges import resolve_service_user

USER = resolve_service_user(None, None)
"""The default service user: nobody as root, else whoever runs the tests."""


@pytest.fixture
def fake_chapiteau(tmp_path: Path) -> Iterator[int]:
    """A live process whose command line is that of ``chapiteau``."""
    program = tmp_path / "chapiteau"
    program.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    program.chmod(0o755)
    process = subprocess.Popen([str(program), "circus.ini"])
    started(process.pid)
    yield process.pid
    process.kill()
    process.wait()


def started(pid: int) -> None:
    """Wait until ``pid`` has a command line (the kernel sets it a moment after exec)."""
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, f"pid {pid} has no command line"
        time.sleep(0.01)


def pidfile_of(tmp_path: Path, pid: int) -> str:
    path = tmp_path / "chapiteau.pid"
    path.write_text(f"{pid}\n")
    return str(path)


def test_a_live_chapiteau_is_named_as_already_running(tmp_path, fake_chapiteau):
    path = pidfile_of(tmp_path, fake_chapiteau)
    with pytest.raises(PidfileError) as caught:
        check_pidfile(path, USER)
    assert str(caught.value) == (
        f"chapiteau is already running with pid {fake_chapiteau} (pid file {path}): "
        f"stop it first (kill {fake_chapiteau})"
    )


def test_a_live_process_that_is_not_chapiteau_is_said_to_be_another_program(tmp_path):
    with subprocess.Popen(["sleep", "60"]) as stranger:
        try:
            started(stranger.pid)
            path = pidfile_of(tmp_path, stranger.pid)
            with pytest.raises(PidfileError) as caught:
                check_pidfile(path, USER)
            assert f"names pid {stranger.pid}, a running 'sleep 60', not chapiteau: " in str(
                caught.value
            )
        finally:
            stranger.kill()


def test_a_dead_pid_and_our_own_pass(tmp_path):
    check_pidfile(pidfile_of(tmp_path, 999_999_999), USER)
    check_pidfile(pidfile_of(tmp_path, os.getpid()), USER)


def test_only_our_own_pidfile_is_removed(tmp_path):
    ours, theirs = tmp_path / "ours.pid", tmp_path / "theirs.pid"
    write_pidfile(str(ours), USER)
    theirs.write_text("1\n")
    remove_pidfile(str(ours), USER)
    remove_pidfile(str(theirs), USER)
    assert not ours.exists() and theirs.read_text() == "1\n"


def test_a_fifo_in_the_pidfiles_place_is_left_without_waiting_on_it(tmp_path):
    # Opening a FIFO for reading waits for a writer: the stopping broker must not.
    fifo = tmp_path / "chapiteau.pid"
    os.mkfifo(fifo)
    remove_pidfile(str(fifo), USER)
    assert fifo.is_fifo()
