"""The broker's peer handling, driven in-process: Broker methods on real socketpairs.

These tests build the situations a hostile peer can only create by racing the
kernel (two events in one select batch, a clock that ran out) and call the
loop's own steps on them, so that each case runs every time, in milliseconds.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chapiteau.broker.broker import Broker
from chapiteau.broker.config import load_broker_config
from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.sd_notify import Notifier
from chapiteau.protocol.broker_messages import ListSockets, SocketList, encode
from chapiteau.protocol.channel import channel_pair, receive

TIMEOUT = 10.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    config = tmp_path / "chapiteau.ini"
    config.write_text("[broker]\n")
    me = ServiceUser("me", os.getuid(), os.getgid(), (os.getgid(),))
    broker = Broker(load_broker_config(str(config)), {}, me, launcher=None)
    yield broker
    for conn in list(broker.peers):
        broker.drop_peer(conn)
    broker.selector.close()


def exited_child() -> subprocess.Popen:
    """A child that has exited and is not reaped yet: what the broker's SIGCHLD finds."""
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    return child


def test_a_frame_from_a_supervisor_that_exited_in_the_same_batch_is_ignored(
    broker: Broker,
) -> None:
    broker_end, supervisor_end = channel_pair()
    broker.supervisor = exited_child()
    broker.supervisor_was_ready = True  # it had been serving: its death is restarted
    broker.supervisor_channel = broker_end
    broker.add_peer(broker_end, "supervisor")
    # The SIGCHLD wake-up and a frame the supervisor's own child sent just
    # after its exit, ready together, the wake-up first.
    sigchld_read, sigchld_write = socket.socketpair()
    broker.selector.register(sigchld_read, selectors.EVENT_READ, broker.reap)
    sigchld_write.send(b"\x11")
    supervisor_end.send(encode(ListSockets(), 1))
    events = broker.selector.select(TIMEOUT)
    events.sort(key=lambda event: event[0].fileobj is not sigchld_read)
    assert len(events) == 2

    broker.dispatch(events)

    assert broker.peers == {} and broker.supervisor is None
    assert broker.restart_at is not None
    broker.selector.unregister(sigchld_read)
    for sock in (sigchld_read, sigchld_write, supervisor_end):
        sock.close()


def test_a_bug_while_serving_a_peer_drops_that_peer_not_the_broker(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    buggy, buggy_client = channel_pair()
    healthy, healthy_client = channel_pair()
    broker.add_peer(buggy, "buggy")
    broker.add_peer(healthy, "healthy")
    broker.peers[healthy].greeted = True

    def crash(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(broker.service, "handle", crash)
    buggy_client.send(encode(ListSockets(), 1))
    broker.dispatch(broker.selector.select(TIMEOUT))
    monkeypatch.undo()
    healthy_client.send(encode(ListSockets(), 2))
    broker.dispatch(broker.selector.select(TIMEOUT))

    assert list(broker.peers) == [healthy]
    assert buggy_client.recv(100) == b""
    healthy_client.settimeout(TIMEOUT)
    reply = receive(healthy_client)
    assert reply is not None and isinstance(reply.message, SocketList)
    for sock in (buggy_client, healthy_client):
        sock.close()


def test_an_idle_broker_sleeps_with_no_timeout(broker: Broker) -> None:
    greeted, greeted_client = channel_pair()
    supervisor, supervisor_client = channel_pair()
    broker.add_peer(greeted, "uid 0", time.monotonic() + 5)
    broker.peers[greeted].greeted = True
    broker.add_peer(supervisor, "supervisor")
    assert broker.next_timeout() is None
    for sock in (greeted_client, supervisor_client):
        sock.close()


def test_the_hello_deadline_sets_the_select_timeout_then_drops_the_silent_peer(
    broker: Broker,
) -> None:
    silent, silent_client = channel_pair()
    broker.add_peer(silent, "uid 0", time.monotonic() + 60)
    timeout = broker.next_timeout()
    assert timeout is not None and 0 < timeout <= 60
    broker.peers[silent].hello_by = time.monotonic()
    broker.run_timers()
    assert broker.peers == {} and broker.next_timeout() is None
    silent_client.close()


def test_only_a_watchdog_gives_the_idle_broker_a_timer(tmp_path: Path) -> None:
    config = tmp_path / "chapiteau.ini"
    config.write_text("[broker]\n")
    me = ServiceUser("me", os.getuid(), os.getgid(), (os.getgid(),))
    notify = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    for environ, has_timer in ((notify, False), (notify | {"WATCHDOG_USEC": "4000000"}, True)):
        notifier = Notifier.from_environment(dict(environ))
        broker = Broker(load_broker_config(str(config)), {}, me, None, notifier=notifier)
        broker.run_timers()
        timeout = broker.next_timeout()
        assert (timeout is not None) == has_timer
        assert timeout is None or 0 < timeout <= 2.0  # half of WATCHDOG_USEC at most
        broker.selector.close()
        notifier.close()
