"""What the broker holds for the supervisor's next generation: hold, release, take_held,
handover, and what becomes of a dead supervisor's workers; driven in-process on real
socketpairs, with hostile requests."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chapiteau.broker.broker import Broker
from chapiteau.broker.config import load_broker_config
from chapiteau.broker.privileges import ServiceUser
from chapiteau.protocol.broker_messages import (
    HEADER,
    MAX_HELD_PER_REPLY,
    Error,
    Handover,
    Held,
    Hello,
    HoldMemfd,
    HoldPipes,
    Message,
    Ok,
    Release,
    TakeHeld,
)
from chapiteau.protocol.channel import Received, channel_pair, close_fds, receive, send


def make_broker(tmp_path: Path, extra: str = "") -> Broker:
    config = tmp_path / "chapiteau.ini"
    config.write_text(f"[broker]\n{extra}")
    me = ServiceUser("me", os.getuid(), os.getgid(), (os.getgid(),))
    return Broker(load_broker_config(str(config)), {}, me, launcher=None)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = make_broker(tmp_path)
    yield broker
    for conn in list(broker.peers):
        broker.drop_peer(conn)
    broker.service.held.close()
    broker.selector.close()


@pytest.fixture
def client(broker: Broker) -> Iterator[socket.socket]:
    """A greeted peer's end."""
    broker_end, peer_end = channel_pair()
    broker.add_peer(broker_end, "supervisor")
    assert ask(broker, peer_end, Hello()).message.TYPE == "welcome"
    yield peer_end
    peer_end.close()


def ask(broker: Broker, client: socket.socket, message: Message | bytes) -> Received:
    """Send one request (a message, or raw frame bytes), let the broker answer it, read it."""
    if isinstance(message, bytes):
        client.send(message)
    else:
        send(client, message, 7)
    conn = next(conn for conn, peer in broker.peers.items() if conn.fileno() >= 0)
    broker.serve(conn)
    received = receive(client)
    assert received is not None
    return received


def raw(text: str) -> bytes:
    payload = text.encode()
    return HEADER.pack(len(payload)) + payload


def error_code(received: Received) -> str:
    assert isinstance(received.message, Error), received.message
    assert received.fds == ()
    return received.message.code


def test_a_held_pipe_keeps_a_worker_writing_after_the_supervisor_closed_its_read_end(
    broker: Broker, client: socket.socket
) -> None:
    received = ask(broker, client, HoldPipes(("out.1",)))
    assert received.message == Held((("out.1", 2),))
    read_end, write_end = received.fds
    assert stat.S_ISFIFO(os.fstat(read_end).st_mode)
    os.close(read_end)  # the supervisor died

    assert os.write(write_end, b"still here\n") == 11  # no EPIPE, no SIGPIPE

    taken = ask(broker, client, TakeHeld())
    assert taken.message == Held((("out.1", 1),))
    assert os.read(taken.fds[0], 100) == b"still here\n"
    close_fds([write_end, *taken.fds])


def test_a_pipe_is_no_longer_held_once_released(broker: Broker, client: socket.socket) -> None:
    read_end, write_end = ask(broker, client, HoldPipes(("out.1",))).fds
    os.close(read_end)
    assert ask(broker, client, Release(("out.1", "never.held"))).message == Ok()

    with pytest.raises(BrokenPipeError):
        os.write(write_end, b"x")
    os.close(write_end)
    assert ask(broker, client, TakeHeld()).message == Held(())


def test_holding_a_key_again_replaces_and_closes_what_it_held(
    broker: Broker, client: socket.socket
) -> None:
    first_read, first_write = ask(broker, client, HoldPipes(("out.1",))).fds
    os.close(first_read)
    second = ask(broker, client, HoldPipes(("out.1",))).fds

    with pytest.raises(BrokenPipeError):
        os.write(first_write, b"x")
    assert len(broker.service.held) == 1
    close_fds([first_write, *second])


def test_a_memfd_is_held_and_handed_to_the_next_supervisor_with_what_was_written(
    broker: Broker, client: socket.socket
) -> None:
    received = ask(broker, client, HoldMemfd("state.0"))
    assert received.message == Held((("state.0", 1),))
    os.pwrite(received.fds[0], b'{"serial": 1}', 0)
    os.close(received.fds[0])

    taken = ask(broker, client, TakeHeld())
    assert taken.message == Held((("state.0", 1),))
    assert os.pread(taken.fds[0], 100, 0) == b'{"serial": 1}'
    os.close(taken.fds[0])


def test_take_held_pages_in_key_order_and_keeps_holding(
    broker: Broker, client: socket.socket
) -> None:
    keys = [f"k{index:04d}" for index in range(MAX_HELD_PER_REPLY + 3)]
    for key in keys:
        close_fds(ask(broker, client, HoldMemfd(key)).fds)

    first = ask(broker, client, TakeHeld())
    assert isinstance(first.message, Held) and first.message.more
    last_key = first.message.entries[-1][0]
    second = ask(broker, client, TakeHeld(last_key))
    assert isinstance(second.message, Held) and not second.message.more
    taken = [key for key, _ in (*first.message.entries, *second.message.entries)]
    assert taken == keys
    assert len(first.fds) + len(second.fds) == len(keys)
    close_fds([*first.fds, *second.fds])
    assert len(broker.service.held) == len(keys)


def test_beyond_max_held_fds_a_hold_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, "max_held_fds = 2\n")
    broker_end, client = channel_pair()
    broker.add_peer(broker_end, "supervisor")
    ask(broker, client, Hello())
    close_fds(ask(broker, client, HoldPipes(("a", "b"))).fds)

    assert error_code(ask(broker, client, HoldPipes(("c",)))) == "too_many"
    assert error_code(ask(broker, client, HoldMemfd("d"))) == "too_many"
    # Replacing a held key needs no room.
    close_fds(ask(broker, client, HoldMemfd("a")).fds)
    assert len(broker.service.held) == 2
    broker.service.held.close()
    client.close()


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"hold_pipes","id":1,"keys":["../etc"]}',
        '{"type":"hold_pipes","id":1,"keys":["a\\n"]}',
        '{"type":"hold_pipes","id":1,"keys":"out.1"}',
        '{"type":"hold_pipes","id":1,"keys":[1]}',
        '{"type":"hold_pipes","id":1,"keys":["' + "x" * 201 + '"]}',
        '{"type":"hold_memfd","id":1,"key":""}',
        '{"type":"hold_memfd","id":1,"key":null}',
        '{"type":"hold_memfd","id":1,"key":"a","fd":3}',
        '{"type":"release","id":1,"keys":[{"key":"a"}]}',
        '{"type":"take_held","id":1,"after":5}',
        '{"type":"take_held","id":1,"after":"a/b"}',
        '{"type":"held","id":1,"entries":[["a",1]]}',
        '{"type":"handover","id":1,"now":true}',
    ],
)
def test_malformed_hold_requests_are_refused_and_hold_nothing(
    broker: Broker, client: socket.socket, frame: str
) -> None:
    assert error_code(ask(broker, client, raw(frame))) in (
        "bad_message",
        "too_many",
        "unexpected_fds",
    )
    assert len(broker.service.held) == 0
    assert broker.peers  # the peer is still served


def test_too_many_keys_in_one_request_are_refused(broker: Broker, client: socket.socket) -> None:
    keys = ",".join(f'"k{index}"' for index in range(MAX_HELD_PER_REPLY + 1))
    frame = raw(f'{{"type":"hold_pipes","id":1,"keys":[{keys}]}}')
    assert error_code(ask(broker, client, frame)) == "too_many"
    assert len(broker.service.held) == 0


def test_a_peer_cannot_hand_the_broker_an_fd_to_hold(broker: Broker, client: socket.socket) -> None:
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        # Linux 6.16 and later refuse it in sendmsg (SO_PASSRIGHTS off); older kernels
        # deliver it, and the broker closes it unread.
        socket.send_fds(client, [raw('{"type":"hold_memfd","id":1,"key":"a"}')], [read_end])
        conn = next(iter(broker.peers))
        broker.serve(conn)
        received = receive(client)
        assert received is not None and error_code(received) == "unexpected_fds"
    assert len(broker.service.held) == 0
    close_fds([read_end, write_end])


def test_handover_from_a_peer_that_is_not_the_current_supervisor_is_ignored(
    broker: Broker, client: socket.socket
) -> None:
    assert ask(broker, client, Handover()).message == Ok()
    assert not broker.handing_over


def orphan() -> subprocess.Popen:
    """A worker of a dead supervisor: a child of ours in a process group of its own."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def dead_supervisor(broker: Broker, ready: bool = True) -> subprocess.Popen:
    supervisor = subprocess.Popen(["true"])
    os.waitid(os.P_PID, supervisor.pid, os.WEXITED | os.WNOWAIT)
    broker.supervisor = supervisor
    broker.supervisor_was_ready = ready
    broker.supervisor_started = time.monotonic()
    return supervisor


def test_the_workers_of_a_dead_supervisor_keep_running_and_it_restarts_at_once(
    broker: Broker,
) -> None:
    worker = orphan()
    try:
        dead_supervisor(broker)
        broker.reap()
        assert broker.restart_at is not None and broker.restart_at <= time.monotonic()
        assert broker.kill_orphans_at is None
        assert worker.poll() is None
    finally:
        worker.kill()
        worker.wait()


def test_a_crash_looping_supervisor_is_restarted_after_a_growing_delay(broker: Broker) -> None:
    delays = []
    for _ in range(3):
        dead_supervisor(broker)
        broker.reap()
        assert broker.restart_at is not None
        delays.append(round(broker.restart_at - time.monotonic(), 1))
    assert delays == [0.0, 0.1, 0.2]


def test_after_a_handover_the_next_supervisor_starts_at_once_even_when_crash_looping(
    broker: Broker,
) -> None:
    for _ in range(3):
        dead_supervisor(broker)
        broker.reap()
    broker_end, client = channel_pair()
    supervisor = dead_supervisor(broker)
    broker.supervisor_channel = broker_end
    broker.add_peer(broker_end, "supervisor")
    ask(broker, client, Hello())
    assert ask(broker, client, Handover()).message == Ok()
    broker.reap()
    assert broker.restart_at is not None and broker.restart_at <= time.monotonic()
    assert supervisor.pid not in [broker.supervisor]
    client.close()


def test_orphans_are_stopped_when_the_broker_stops(broker: Broker) -> None:
    worker = orphan()
    try:
        dead_supervisor(broker)
        broker.reap()
        broker.stop()
        assert worker.wait(10) == -signal.SIGTERM
        assert broker.kill_orphans_at is not None
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        worker.wait()


def test_what_the_broker_holds_is_closed_when_it_stops(
    broker: Broker, client: socket.socket
) -> None:
    read_end, write_end = ask(broker, client, HoldPipes(("out.1",))).fds
    os.close(read_end)
    broker.exit_status = 0
    broker.close()
    with pytest.raises(OSError) as failure:
        os.write(write_end, b"x")
    assert failure.value.errno == errno.EPIPE
    os.close(write_end)


keys = st.sampled_from(["a", "b", "c", "out.1.1", "state.0", "x" * 200])
requests = st.one_of(
    st.builds(HoldPipes, st.lists(keys, max_size=4).map(tuple)),
    st.builds(HoldMemfd, keys),
    st.builds(Release, st.lists(keys, max_size=4).map(tuple)),
    st.builds(TakeHeld, st.just("") | keys),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests, max_size=25))
def test_any_sequence_of_hold_requests_stays_within_the_limit_and_leaks_nothing(
    sequence: list[Message],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        broker = make_broker(Path(directory), "max_held_fds = 3\n")
    fds_before = len(os.listdir("/proc/self/fd"))
    broker_end, client = channel_pair()
    broker.add_peer(broker_end, "supervisor")
    ask(broker, client, Hello())
    for request in sequence:
        received = ask(broker, client, request)
        close_fds(received.fds)
        assert isinstance(received.message, Held | Ok) or error_code(received) == "too_many"
        assert len(broker.service.held) <= 3
    broker.drop_peer(broker_end)
    client.close()
    broker.service.held.close()
    broker.selector.close()
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_the_broker_raises_its_soft_fd_limit_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import resource; from chapiteau.broker.broker import raise_fd_limit; "
        "raise_fd_limit(); print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [str(hard), str(hard)]
