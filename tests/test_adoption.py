"""Tests for chapiteau.supervisor.adoption: nothing the previous generation left is left
unmanaged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable

from structlog.testing import capture_logs

from chapiteau.supervisor.adoption import Adoption
from chapiteau.supervisor.broker_client import BrokerError
from chapiteau.supervisor.children.process_tree import start_time as proc_start_time
from chapiteau.supervisor.handover import Handover, markers
from chapiteau.supervisor.state import ProcessRecord, WatcherRecord, encode, encode_process
from tests.test_handover import FakeBroker


class LostState(FakeBroker):
    def take_held(self) -> dict[str, int]:
        raise BrokerError("broker channel failed during take_held")


def marked_orphan() -> subprocess.Popen:
    """A worker of ours whose supervisor died: a child of "the broker" (this process).
    With SIGINT at its default, as a spawn leaves it, even when these tests run as a
    shell's background job (which ignores SIGINT, and an ignored signal stays so
    across exec)."""
    return subprocess.Popen(
        ["sleep", "60"],
        env={"PATH": os.environ["PATH"], **markers("web")},
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def refuse(address: str) -> None:
    raise AssertionError(f"no notify socket was recorded, yet {address} is opened")


def adopt(broker: FakeBroker, listen: Callable[[str], None] = refuse) -> dict:
    async def run() -> dict:
        handover = Handover(broker, asyncio.get_running_loop(), list, "2")
        adoption = Adoption(handover, os.getpid(), listen)
        wanted = await adoption.run({}, set())
        await asyncio.gather(*adoption.retiring)
        return wanted

    return asyncio.run(run())


def test_when_the_state_is_lost_every_worker_left_is_stopped() -> None:
    orphan = marked_orphan()
    try:
        assert adopt(LostState()) == {}
        assert orphan.wait(5) == -signal.SIGTERM
    finally:
        orphan.kill()
        orphan.wait()


def test_workers_of_a_watcher_the_config_no_longer_has_are_stopped_with_its_stop_signal() -> None:
    orphan = marked_orphan()
    broker = FakeBroker()
    record = ProcessRecord(orphan.pid, 1, 0.0, proc_start_time(orphan.pid) or -1)
    removed = WatcherRecord("gone", "active", stop_signal=signal.SIGINT)
    fd = broker.hold_memfd("state.1")
    os.write(fd, encode(1, [(removed, [encode_process(record)])]))
    os.close(fd)
    try:
        assert adopt(broker) == {}
        assert orphan.wait(5) == -signal.SIGINT
    finally:
        orphan.kill()
        orphan.wait()


ADDRESS = "@chapiteau-notify/1/0123456789abcdef"


def broker_with_notify_socket() -> FakeBroker:
    broker = FakeBroker()
    fd = broker.hold_memfd("state.1")
    os.write(fd, encode(1, [], ADDRESS))
    os.close(fd)
    return broker


def test_the_previous_notify_socket_address_is_listened_on_again() -> None:
    opened: list[str] = []
    adopt(broker_with_notify_socket(), opened.append)
    assert opened == [ADDRESS]


def test_a_notify_socket_address_taken_meanwhile_is_reported() -> None:
    def taken(address: str) -> None:
        raise OSError(98, "Address already in use")

    with capture_logs() as logs:
        adopt(broker_with_notify_socket(), taken)
    [warning] = [entry for entry in logs if entry["event"] == "adopted_workers_unheard"]
    assert warning["address"] == ADDRESS and warning["watchers"] == []
