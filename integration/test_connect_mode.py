"""Connect mode: the broker listens on [broker] socket_path; a supervisor run apart connects.

The broker spawns no supervisor; the socket's directory is created 0750 with
the service user's group; a supervisor started by hand as that user gets the
sockets and its workers serve HTTP; a peer with another uid is refused
(SO_PEERCRED) even when the file permissions let it connect.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.supervisor.children.process_tree import children
from integration.conftest import BROKER_USER
from integration.harness import DEFAULT_TIMEOUT, free_port, http_get, kill_tree, wait_until

NOBODY = pwd.getpwnam("nobody")
STRANGER_UID = 4321


def config(workdir: Path, port: int) -> str:
    return f"""
[broker]
user = nobody
socket_path = {workdir}/run/broker.sock

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = python3 hello_wsgi.py --fd $(circus.sockets.web)
numprocesses = 2
copy_env = true
"""


@pytest.fixture
def started(chapiteau, workdir) -> tuple:
    port = free_port()
    tree = chapiteau(config(workdir, port))
    tree.wait_for("broker_listening")
    return tree, port


@pytest.fixture
def supervisors() -> Iterator[list[subprocess.Popen]]:
    """Supervisors started by hand; each is killed with its whole tree afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        kill_tree([process.pid])
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def run_supervisor(workdir: Path, supervisors: list[subprocess.Popen]) -> subprocess.Popen:
    with open(workdir / "supervisor.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chapiteau.supervisor",
                "--broker-socket",
                str(workdir / "run" / "broker.sock"),
                str(workdir / "chapiteau.ini"),
            ],
            user=NOBODY.pw_uid,
            group=NOBODY.pw_gid,
            extra_groups=[],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    supervisors.append(process)
    return process


def test_broker_spawns_no_supervisor(started):
    tree, _ = started
    tree.wait_for("socket_bound")
    assert children(tree.pid) == []
    assert not tree.events_named("supervisor_started")


def test_socket_directory_is_0750_with_the_service_group(started, workdir):
    run = os.stat(workdir / "run")
    assert stat.S_IMODE(run.st_mode) == 0o750
    # Its owner is the broker's own account: it removes the socket at stop without root.
    assert (run.st_uid, run.st_gid) == (pwd.getpwnam(BROKER_USER).pw_uid, NOBODY.pw_gid)
    sock = os.lstat(workdir / "run" / "broker.sock")
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o660
    assert sock.st_gid == NOBODY.pw_gid


def test_socket_directory_mode_ignores_the_umask(chapiteau, workdir):
    previous = os.umask(0o077)
    try:
        tree = chapiteau(config(workdir, free_port()))
    finally:
        os.umask(previous)
    tree.wait_for("broker_listening")
    assert stat.S_IMODE(os.stat(workdir / "run").st_mode) == 0o750


def test_supervisor_started_by_hand_as_nobody_serves_http(started, workdir, supervisors):
    tree, port = started
    supervisor = run_supervisor(workdir, supervisors)
    bodies: list[str] = []

    def served() -> bool:
        with contextlib.suppress(OSError):
            bodies.append(http_get(port, timeout=2))
            return True
        return False

    wait_until(served, DEFAULT_TIMEOUT)
    assert f"uid {NOBODY.pw_uid}" in bodies[-1]
    assert supervisor.poll() is None
    assert children(tree.pid) == []


def test_peer_with_another_uid_is_refused(started, workdir):
    tree, _ = started
    probe = (
        "import sys\n"
        "from chapiteau.supervisor.broker_client import BrokerClient, BrokerError\n"
        "try:\n"
        f"    BrokerClient.connect({str(workdir / 'run' / 'broker.sock')!r})\n"
        "except BrokerError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        user=STRANGER_UID,
        group=NOBODY.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=DEFAULT_TIMEOUT,
    )
    assert result.returncode == 3, result
    assert "during hello" in result.stdout
    tree.wait_for("peer_rejected", where=lambda e: e["uid"] == STRANGER_UID)


def test_stop_removes_the_broker_socket(started, workdir):
    tree, _ = started
    assert tree.stop() == 0
    assert not os.path.lexists(workdir / "run" / "broker.sock")


def test_second_broker_on_the_same_path_is_refused(started, workdir):
    path = workdir / "run" / "broker.sock"
    inode = os.lstat(path).st_ino
    other = workdir / "other.ini"
    other.write_text(f"[broker]\nuser = nobody\nsocket_path = {path}\n")
    result = subprocess.run(
        [sys.executable, "-m", "chapiteau.broker", str(other)],
        capture_output=True,
        text=True,
        timeout=DEFAULT_TIMEOUT,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "something is listening there" in lines[0], result.stderr
    assert os.lstat(path).st_ino == inode


def test_stale_broker_socket_file_is_replaced(chapiteau, workdir):
    (workdir / "run").mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(workdir / "run" / "broker.sock"))
    stale.close()
    tree = chapiteau(config(workdir, free_port()))
    tree.wait_for("broker_listening")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        probe.connect(str(workdir / "run" / "broker.sock"))
