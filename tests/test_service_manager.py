"""broker/service_manager.py: what systemd hears, in which order, against a real socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.sd_notify import Notifier
from chapiteau.broker.service_manager import ServiceManager


class Systemd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def messages(self) -> list[list[str]]:
        """Every message received so far, each as its lines."""
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return found


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield Systemd(sock)
    sock.close()


def manager(tmp_path: Path, **environ: str) -> ServiceManager:
    return ServiceManager(
        Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify"), **environ})
    )


def test_a_reload_ends_with_the_last_pending_one(tmp_path: Path, systemd: Systemd) -> None:
    service = manager(tmp_path)
    service.reloading(forwarded=True)  # before start-up is over: not a reload for systemd
    service.supervisor_ready("serving")
    assert systemd.messages() == [["READY=1", "STATUS=serving"]]
    service.reloading(forwarded=True)
    service.reloading(forwarded=True)
    service.reload_done(ok=True)
    [first, second] = systemd.messages()
    assert first[0] == "RELOADING=1" and first[1].startswith("MONOTONIC_USEC=")
    assert second[0] == "RELOADING=1"
    service.reload_done(ok=False)
    failed = "STATUS=reload failed: a watcher kept its old processes (log)"
    assert systemd.messages() == [["READY=1", failed]]
    service.reload_done(ok=True)  # none pending: a peer's word changes nothing
    assert systemd.messages() == []


def test_mainpid_once_when_the_broker_is_not_the_process_systemd_started(
    tmp_path: Path, systemd: Systemd
) -> None:
    service = manager(tmp_path)
    service.notifier.main_pid = os.getpid() + 1  # as after --daemon's forks
    service.supervisor_ready("serving")
    service.supervisor_ready("serving again")
    assert systemd.messages() == [
        [f"MAINPID={os.getpid()}", "READY=1", "STATUS=serving"],
        ["READY=1", "STATUS=serving again"],
    ]


def test_a_supervisor_ready_ends_a_reload_its_predecessor_left(
    tmp_path: Path, systemd: Systemd
) -> None:
    service = manager(tmp_path)
    service.supervisor_ready("serving")
    service.reloading(forwarded=True)
    service.status("restarting")
    service.supervisor_ready("serving again")
    service.reload_done(ok=True)
    assert [message[0] for message in systemd.messages()] == [
        "READY=1",
        "RELOADING=1",
        "STATUS=restarting",
        "READY=1",
    ]


def test_without_a_supervisor_the_reload_is_over_at_once(tmp_path: Path, systemd: Systemd) -> None:
    service = manager(tmp_path)
    service.supervisor_ready("waiting")
    service.reloading(forwarded=False)
    assert [message[0] for message in systemd.messages()] == ["READY=1", "RELOADING=1", "READY=1"]


def test_stopping_is_said_once_and_silences_the_rest(tmp_path: Path, systemd: Systemd) -> None:
    service = manager(tmp_path)
    service.supervisor_ready("serving")
    service.stop()
    service.stop()
    service.status("restarting")
    service.reloading(forwarded=True)
    assert systemd.messages() == [
        ["READY=1", "STATUS=serving"],
        ["STOPPING=1", "STATUS=stopping"],
    ]


def test_the_watchdog_pings_at_half_its_interval_and_only_when_due(
    tmp_path: Path, systemd: Systemd
) -> None:
    service = manager(tmp_path, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert service.watchdog_at is not None
    start = service.watchdog_at
    service.watchdog(start)
    service.watchdog(start + 0.5)
    assert service.watchdog_at == start + 1.0
    service.watchdog(start + 1.0)
    assert systemd.messages() == [["WATCHDOG=1"], ["WATCHDOG=1"]]


def test_no_watchdog_no_timer(tmp_path: Path) -> None:
    assert manager(tmp_path).watchdog_at is None
    assert manager(tmp_path, WATCHDOG_USEC="2000000", WATCHDOG_PID="1").watchdog_at is None


def test_a_status_stays_one_assignment(tmp_path: Path, systemd: Systemd) -> None:
    service = manager(tmp_path)
    service.status("cannot start\nMAINPID=1\n")
    assert systemd.messages() == [["STATUS=cannot start MAINPID=1"]]
