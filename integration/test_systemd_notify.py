"""The broker talks to systemd: READY, RELOADING, STOPPING, WATCHDOG and STATUS.

systemd cannot run here, so a datagram socket bound by the test stands in for
its notify socket: chapiteau starts with ``NOTIFY_SOCKET`` (and
``WATCHDOG_USEC``) naming it, as systemd would start a ``Type=notify`` service,
and the test reads what arrives, in order.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.harness import DEFAULT_TIMEOUT, environ, is_alive, kill_tree, wait_until

CONFIG = """
[broker]
user = nobody

[watcher:sleeper]
cmd = sleep 1000
numprocesses = 2
"""

SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class FakeSystemd:
    """The notify socket's other end: every message, as a dict of its assignments."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = DEFAULT_TIMEOUT, skip_watchdog: bool = True) -> dict[str, str]:
        """The next message (pings left out unless asked for); AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"nothing in {timeout}s after {self.messages}") from None
            message = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.messages.append(message)
            if not (skip_watchdog and message == {"WATCHDOG": "1"}):
                return message

    def next_with(self, key: str) -> dict[str, str]:
        """Skip to the next message that assigns ``key``."""
        while key not in (message := self.next()):
            pass
        return message


@pytest.fixture(params=["path", "abstract"])
def systemd(request, workdir: Path, monkeypatch) -> Iterator[FakeSystemd]:
    """A notify socket (a path, or ``@name`` in the abstract namespace) in the environment."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(workdir / "notify")
        sock.bind(name)
    else:
        name = f"@chapiteau-test-notify-{os.getpid()}"
        sock.bind(b"\0" + name[1:].encode())
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    yield FakeSystemd(sock, name)
    sock.close()


def test_start_reload_stop_and_a_clean_environment(chapiteau, systemd):
    tree = chapiteau(CONFIG)
    ready = systemd.next()
    supervisor = tree.supervisor_pid()
    assert ready["READY"] == "1"
    assert f"supervisor pid {supervisor}" in ready["STATUS"]
    assert "MAINPID" not in ready
    workers = tree.worker_pids("sleeper", 2)
    for pid in [supervisor, *workers]:
        assert not set(SYSTEMD_VARIABLES) & set(environ(pid)), pid

    os.kill(tree.pid, signal.SIGHUP)
    reloading = systemd.next()
    assert reloading["RELOADING"] == "1"
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now - int(reloading["MONOTONIC_USEC"]) < DEFAULT_TIMEOUT * 1e6
    reloaded = systemd.next()
    assert reloaded == {"READY": "1", "STATUS": "reloaded"}
    # READY=1 came once the reload was over: the old workers are gone, two new ones run.
    new_workers = tree.worker_pids("sleeper", 2)
    assert not set(new_workers) & set(workers)
    assert len(tree.events_named("process_spawned")) == 4

    assert tree.stop() == 0
    assert systemd.next()["STOPPING"] == "1"


def test_watchdog_pings_at_half_the_interval(chapiteau, systemd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    tree = chapiteau(CONFIG)
    assert systemd.next()["READY"] == "1"
    pings = 0
    while pings < 3:
        pings += systemd.next(skip_watchdog=False) == {"WATCHDOG": "1"}
    supervisor = tree.supervisor_pid()
    for pid in [supervisor, *tree.worker_pids("sleeper", 2)]:
        assert not set(SYSTEMD_VARIABLES) & set(environ(pid)), pid
    assert tree.stop() == 0


@pytest.mark.parametrize("watchdog", [None, "another pid"])
def test_no_watchdog_pings_unless_asked_for_this_process(chapiteau, systemd, monkeypatch, watchdog):
    if watchdog is not None:
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", "1")
    tree = chapiteau(CONFIG)
    assert systemd.next(skip_watchdog=False)["READY"] == "1"
    # A reload round trip lasts longer than the pings' interval would be.
    os.kill(tree.pid, signal.SIGHUP)
    assert systemd.next(skip_watchdog=False)["RELOADING"] == "1"
    assert systemd.next(skip_watchdog=False)["READY"] == "1"
    assert tree.stop() == 0
    assert systemd.next(skip_watchdog=False)["STOPPING"] == "1"
    assert {"WATCHDOG": "1"} not in systemd.messages


def test_a_supervisor_crash_is_reported_then_its_successor_ready(chapiteau, systemd):
    tree = chapiteau(CONFIG)
    assert systemd.next()["READY"] == "1"
    first = tree.supervisor_pid()
    os.kill(first, signal.SIGKILL)
    died = systemd.next()
    assert died == {"STATUS": f"the supervisor (pid {first}) was killed by SIGKILL; restarting it"}
    again = systemd.next()
    second = tree.wait_for("supervisor_started", where=lambda e: e["start"] == 2)[-1]["pid"]
    assert again["READY"] == "1"
    assert f"supervisor pid {second} (start 2)" in again["STATUS"]


def test_daemon_reports_its_pid(chapiteau, systemd, workdir):
    tree = chapiteau(CONFIG, "--daemon", "--log-output", str(workdir / "daemon.log"))
    ready = systemd.next()
    daemon = int(ready["MAINPID"])
    try:
        assert tree.process.wait(DEFAULT_TIMEOUT) == 0
        assert daemon != tree.pid
        assert ready["READY"] == "1"
        os.kill(daemon, signal.SIGTERM)
        assert systemd.next()["STOPPING"] == "1"
        wait_until(lambda: not is_alive(daemon), what="the daemon's exit")
    finally:
        kill_tree([daemon])


def test_a_failed_reload_is_over_too_and_says_so(chapiteau, systemd, workdir):
    program = workdir / "sleeper"
    program.write_text("#!/bin/sh\nexec sleep 1000\n")
    program.chmod(0o755)
    tree = chapiteau(CONFIG.replace("cmd = sleep 1000", f"cmd = {program}"))
    assert systemd.next()["READY"] == "1"
    workers = tree.worker_pids("sleeper", 2)
    program.unlink()  # the new processes cannot start: the old ones keep serving
    os.kill(tree.pid, signal.SIGHUP)
    assert systemd.next()["RELOADING"] == "1"
    failed = systemd.next()
    assert failed["READY"] == "1"
    assert failed["STATUS"].startswith("reload failed")
    assert tree.worker_pids("sleeper", 2) == workers
