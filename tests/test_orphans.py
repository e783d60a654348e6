"""Tests for broker/orphans.py: which processes count as orphans, which sockets are taken back."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from chapiteau.broker import orphans as orphans_module
from chapiteau.broker.binding import BindError
from chapiteau.broker.config import load_broker_config
from chapiteau.broker.orphans import (
    MAX_ENVIRON_BYTES,
    Retirement,
    _marked,
    find_orphans,
    inet_sockets,
    recover_sockets,
)
from chapiteau.broker.socket_table import close_all, open_all
from tests.specs import USER, socket_spec

INSTANCE = "/etc/chapiteau/circus.ini"
MARK = f"CHAPITEAU_INSTANCE={INSTANCE}"
SLEEPER = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(15, signal.SIG_IGN); print(flush=True); time.sleep(60)",
]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd needs CAP_SYS_PTRACE")


@pytest.mark.parametrize(
    ("environ", "marked"),
    [
        (f"A=1\0{MARK}\0B=2\0", True),
        (f"{MARK}.bak\0", False),
        (f"X{MARK}\0", False),
        (f"A={MARK}\0", False),
        ("", False),
    ],
)
def test_the_mark_is_one_whole_entry_of_the_environment(tmp_path, environ, marked):
    (tmp_path / "environ").write_bytes(environ.encode())
    assert _marked(str(tmp_path / "environ"), MARK.encode()) is marked


def test_an_entry_cut_by_the_read_limit_does_not_count(tmp_path):
    padding = "P=" + "x" * (MAX_ENVIRON_BYTES - len(MARK) - 4) + "\0"
    (tmp_path / "environ").write_bytes(f"{padding}{MARK}.bak\0".encode())
    assert len(padding) + len(MARK) == MAX_ENVIRON_BYTES - 1
    assert not _marked(str(tmp_path / "environ"), MARK.encode())


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(mark: str = MARK, fds: tuple[int, ...] = ()) -> subprocess.Popen:
        name, value = mark.split("=", 1)
        process = subprocess.Popen(SLEEPER, env={name: value}, pass_fds=fds, stdout=subprocess.PIPE)
        started.append(process)
        assert process.stdout is not None
        process.stdout.readline()  # SIGTERM is ignored from now on
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _found(instance: str = INSTANCE) -> set[int]:
    orphans = find_orphans(instance)
    for orphan in orphans:
        orphan.close()
    return {orphan.pid for orphan in orphans}


def test_processes_marked_with_the_config_are_found(spawn):
    ours = spawn()
    other = spawn(f"{MARK}.bak")
    found = _found()
    assert ours.pid in found and other.pid not in found


@needs_root
def test_only_processes_of_the_service_user_are_looked_at(spawn):
    ours = spawn()  # runs as root, as this test
    for uid, expected in ((0, True), (65534, False)):
        orphans = find_orphans(INSTANCE, uid)
        for orphan in orphans:
            orphan.close()
        assert (ours.pid in {orphan.pid for orphan in orphans}) is expected


def _recover(creators: set[int], port: int) -> dict:
    orphans = find_orphans(INSTANCE)
    try:
        return recover_sockets(orphans, [socket_spec(port=port)], creators)
    finally:
        for orphan in orphans:
            orphan.close()


@needs_root
def test_the_broker_socket_of_an_orphan_is_recovered(spawn, listening):
    spawn(fds=(listening.fileno(),))
    port = listening.getsockname()[1]
    inode = os.fstat(listening.fileno()).st_ino
    listening.close()
    recovered = _recover({os.geteuid()}, port)
    assert os.fstat(recovered["web"].fd).st_ino == inode
    recovered["web"].sock.close()


@needs_root
def test_a_socket_no_broker_created_is_not_recovered(spawn, listening):
    spawn(fds=(listening.fileno(),))
    port = listening.getsockname()[1]
    listening.close()
    assert _recover({os.geteuid() + 12345}, port) == {}


@needs_root
def test_a_socket_at_another_address_is_not_recovered(spawn, listening):
    spawn(fds=(listening.fileno(),))
    listening.close()
    assert _recover({os.geteuid()}, 1) == {}


@needs_root
def test_a_socket_a_process_with_no_mark_also_holds_is_refused(spawn, listening):
    spawn(fds=(listening.fileno(),))
    live = spawn("RUNNING=1", fds=(listening.fileno(),))
    port = listening.getsockname()[1]
    listening.close()
    with pytest.raises(BindError, match=f"also held by pid {live.pid}, which is no orphan"):
        _recover({os.geteuid()}, port)


def test_retirement_terminates_then_kills(spawn):
    process = spawn()
    [orphan] = [o for o in find_orphans(INSTANCE) if o.pid == process.pid]
    retirement = Retirement([orphan])
    retirement.start(timeout=0)
    assert retirement.kill_at is not None
    retirement.kill()  # SLEEPER ignores SIGTERM
    assert select.select([orphan.pidfd], [], [], 10)[0] == [orphan.pidfd]
    retirement.exited(orphan.pidfd)
    assert retirement.orphans == {} and retirement.kill_at is None
    assert process.wait(10) == -9


@needs_root
def test_marked_processes_nothing_was_recovered_from_are_left_alone(spawn, listening, tmp_path):
    config = tmp_path / "circus.ini"
    config.write_text("[socket:web]\nhost = 127.0.0.1\nport = 0\ntype = SOCK_DGRAM\n")
    process = spawn(f"CHAPITEAU_INSTANCE={config}", fds=(listening.fileno(),))
    sockets, orphans = open_all(load_broker_config(str(config)), USER, [], {os.geteuid()})
    close_all(sockets.values())
    assert orphans == []
    assert process.poll() is None


def test_the_kernel_tables_list_the_sockets_on_a_port(listening):
    inode = f"socket:[{os.fstat(listening.fileno()).st_ino}]"
    port = listening.getsockname()[1]
    assert inode in inet_sockets({port})
    assert inode in inet_sockets(set())
    assert inode not in inet_sockets({port + 1 if port < 65535 else port - 1})


def test_with_no_orphan_the_tables_of_every_socket_are_not_read(monkeypatch):
    def read_tables(ports: object) -> set[str]:
        raise AssertionError("read the kernel's socket tables")

    monkeypatch.setattr(orphans_module, "inet_sockets", read_tables)
    assert recover_sockets([], [socket_spec(port=8080)], {os.geteuid()}) == {}


def test_the_kernel_tables_are_read_a_line_at_a_time(tmp_path):
    # A busy machine has tens of thousands of sockets (TIME_WAIT): the broker's start-up
    # must not hold them all at once, since its memory keeps what it once held.
    row = "   0: 0100007F:1F90 00000000:0000 06 00000000:00000000 03:00000000 00000000 0 0 0 3"
    (tmp_path / "tcp").write_text("header\n" + "\n".join([row] * 50_000) + "\n")
    tracemalloc.start()
    try:
        assert inet_sockets({8080}, str(tmp_path)) == {"socket:[0]"}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
