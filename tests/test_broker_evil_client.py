"""The real broker, in connect mode, against a hostile client: it answers, closes, and goes on.

Each test starts ``python -m chapiteau.broker`` on an INI written for it and
talks raw SEQPACKET to its socket path. After every attack the broker must
still answer a fresh, valid hello + list_sockets, and it must hold no fd it
did not hold before (counted in /proc/<pid>/fd).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from chapiteau.broker.broker import HELLO_DEADLINE, MAX_FDS_IN_FLIGHT, MAX_PEERS
from chapiteau.protocol.broker_messages import (
    HEADER,
    MAX_FRAME_BYTES,
    MAX_NAME_BYTES,
    MAX_NAMES_PER_REQUEST,
    PROTOCOL_VERSION,
    BindReuseport,
    Error,
    GetSockets,
    GetSteering,
    Hello,
    ListSockets,
    Message,
    Ok,
    ReloadConfig,
    Reloaded,
    SocketInfo,
    SocketList,
    Sockets,
    SteeringMaps,
    Welcome,
    encode,
)
from chapiteau.protocol.channel import Received, channel_pair, close_fds, receive
from chapiteau.protocol.steering_maps import fill_slot, set_count
from tests.waiting import wait_until

TIMEOUT = 10.0
SCM_MAX_FD = 253
INTRUDER_UID = 4321
"""Not root and not the service user (nobody); let into the service group to reach the socket."""
NOGROUP = 65534
REFUSED = "refused_by_the_kernel"
"""The outcome of attaching fds when the kernel refuses them (SO_PASSRIGHTS, Linux 6.16+)."""


def kernel_refuses_fds() -> bool:
    """Whether fds sent to the broker's end of a channel never arrive on this kernel."""
    broker_end, peer_end = channel_pair()
    with broker_end, peer_end:
        try:
            socket.send_fds(peer_end, [b"x"], [peer_end.fileno()])
        except PermissionError:
            return True
    return False


FDS_REFUSED = kernel_refuses_fds()


def refused_or(code: str) -> str:
    """What attaching fds to a request gives: refused at sendmsg, or ``code`` from the broker."""
    return REFUSED if FDS_REFUSED else code


@dataclass
class RunningBroker:
    """A broker process started for one test."""

    process: subprocess.Popen
    socket_path: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_events(self) -> list[dict]:
        return json_lines(self.log_path)


def json_lines(path: Path) -> list[dict]:
    """The JSON log lines of a file (other lines skipped)."""
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


def in_child(action: Callable[[], bytes]) -> bytes:
    """Run ``action`` in a forked child and return what it returned (b"crashed" if it raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        outcome = b"crashed"
        try:
            outcome = action()
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as result:
        outcome = result.read()
    os.waitpid(pid, 0)
    return outcome


class Client:
    """A raw SEQPACKET client that can send anything, fds included."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, frame: bytes, fds: Sequence[int] = ()) -> None:
        if fds:
            socket.send_fds(self.sock, [frame], list(fds))
        else:
            self.sock.send(frame)

    def reply(self) -> Received:
        received = receive(self.sock)
        assert received is not None, "the broker closed the connection"
        return received

    def raw(self, frame: bytes, fds: Sequence[int] = ()) -> Received:
        self.send_raw(frame, fds)
        return self.reply()

    def request(self, message: Message, request_id: int = 1, fds: Sequence[int] = ()) -> Received:
        return self.raw(encode(message, request_id), fds)

    def hello(self) -> Welcome:
        welcome = self.request(Hello()).message
        assert isinstance(welcome, Welcome)
        return welcome

    def outcome(self, frame: bytes, fds: Sequence[int] = ()) -> str:
        """The error code of the broker's reply (which carries no fd), or REFUSED."""
        try:
            self.send_raw(frame, fds)
        except PermissionError:
            return REFUSED
        reply = self.reply()
        assert reply.fds == ()
        return error_code(reply)


def error_code(received: Received) -> str:
    assert isinstance(received.message, Error), received.message
    return received.message.code


def frame_of(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def frame_json(obj: object) -> bytes:
    return frame_of(json.dumps(obj).encode())


def assert_serves(broker: RunningBroker) -> None:
    """A fresh client can still say hello and list the configured sockets."""
    assert broker.process.poll() is None, broker.log_path.read_text()
    client = Client(broker.socket_path)
    try:
        assert client.hello().broker_pid == broker.pid
        listing = client.request(ListSockets(), 2)
        assert listing.request_id == 2
        assert isinstance(listing.message, SocketList)
        assert [s.name for s in listing.message.sockets] == ["web", "shared"]
    finally:
        client.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RunningBroker]:
    # The socket directory must be reachable by the intruder of the uid test,
    # and pytest's tmp_path lives under a 0700 directory.
    base = tempfile.mkdtemp(prefix="chapiteau-evil-")
    os.chmod(base, 0o711)
    socket_path = f"{base}/run/broker.sock"
    config = tmp_path / "chapiteau.ini"
    # broker_user = root: out_of_fds() lowers the broker's RLIMIT_NOFILE, which
    # another uid may only do with CAP_SYS_RESOURCE (which containers often lack).
    config.write_text(
        f"[broker]\nsocket_path = {socket_path}\nbroker_user = root\n\n"
        "[socket:web]\nhost = 127.0.0.1\nport = 0\n\n"
        "[socket:shared]\nhost = 127.0.0.1\nport = 0\nso_reuseport = true\n"
    )
    log_path = tmp_path / "broker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chapiteau.broker", str(config), "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    running = RunningBroker(process, socket_path, log_path)
    try:
        wait_until(lambda: _listening(running), TIMEOUT, what="the broker to listen")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)
        shutil.rmtree(base, ignore_errors=True)


def _listening(broker: RunningBroker) -> bool:
    # Watch the log, not the socket: a probe connection would be closed
    # asynchronously and skew the first fd count of the test.
    assert broker.process.poll() is None, f"broker exited: {broker.log_path.read_text()}"
    return any(e.get("event") == "broker_listening" for e in broker.log_events())


@pytest.fixture
def spare_fds() -> Iterator[list[int]]:
    """A few fds of different kinds to attach to requests."""
    sock = socket.socket()
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    yield [sock.fileno(), read_end, write_end, null]
    sock.close()
    close_fds([read_end, write_end, null])


# -- the handshake ---------------------------------------------------------------


def test_welcome_names_the_broker_pid_and_version(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    welcome = client.hello()
    client.close()
    assert welcome == Welcome(PROTOCOL_VERSION, broker.pid)


@pytest.mark.parametrize(
    "message", [ListSockets(), GetSockets(("web",)), BindReuseport("shared"), Ok()]
)
def test_requests_before_hello_are_refused_with_not_hello(
    broker: RunningBroker, message: Message
) -> None:
    client = Client(broker.socket_path)
    reply = client.request(message, 9)
    client.close()
    assert (reply.request_id, error_code(reply), reply.fds) == (9, "not_hello", ())
    assert_serves(broker)


def test_unsupported_version_is_refused_and_leaves_the_peer_unwelcomed(
    broker: RunningBroker,
) -> None:
    client = Client(broker.socket_path)
    refused = client.request(Hello((PROTOCOL_VERSION + 1, 0)), 3)
    after = client.request(ListSockets(), 4)
    client.close()
    assert (refused.request_id, error_code(refused)) == (3, "unsupported_version")
    assert error_code(after) == "not_hello"
    assert_serves(broker)


# -- requests for sockets --------------------------------------------------------


def test_get_sockets_hands_out_the_configured_listening_socket(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.hello()
    reply = client.request(GetSockets(("web",)), 5)
    client.close()
    try:
        assert isinstance(reply.message, Sockets)
        (info,) = reply.message.sockets
        assert os.fstat(reply.fds[0]).st_ino == info.inode
        probe = socket.create_connection(("127.0.0.1", info.port), timeout=TIMEOUT)
        probe.close()
    finally:
        close_fds(reply.fds)


def test_unknown_socket_name_is_refused(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.hello()
    reply = client.request(GetSockets(("web", "db")), 6)
    client.close()
    assert (error_code(reply), reply.fds) == ("unknown_socket", ())
    assert_serves(broker)


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "web\n", "a b", "caf\u00e9", "n" * (MAX_NAME_BYTES + 1), ""]
)
def test_socket_names_with_bad_characters_are_refused(broker: RunningBroker, name: str) -> None:
    client = Client(broker.socket_path)
    client.hello()
    reply = client.raw(frame_json({"type": "get_sockets", "id": 7, "names": [name]}))
    client.close()
    assert (error_code(reply), reply.fds) == ("bad_message", ())
    assert_serves(broker)


def test_bind_reuseport_on_a_socket_without_so_reuseport_is_refused(
    broker: RunningBroker,
) -> None:
    client = Client(broker.socket_path)
    client.hello()
    reply = client.request(BindReuseport("web"), 8)
    client.close()
    assert (error_code(reply), reply.fds) == ("not_reuseport", ())
    assert_serves(broker)


def test_bind_reuseport_siblings_are_not_kept_by_the_broker(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    replies = [client.request(BindReuseport("shared"), i) for i in range(20)]
    # The broker closes a sibling just after sending it: one more round trip waits for that.
    client.request(ListSockets(), 21)
    after = broker.fd_count()
    client.close()
    for reply in replies:
        close_fds(reply.fds)
    assert all(isinstance(reply.message, Sockets) and len(reply.fds) == 1 for reply in replies)
    assert after == before


# -- steering --------------------------------------------------------------------


def test_get_steering_hands_the_maps_that_steer_the_siblings(broker: RunningBroker) -> None:
    unavailable = [e for e in broker.log_events() if e.get("event") == "steering_unavailable"]
    if unavailable:
        pytest.skip(f"the broker has no steering here: {unavailable[0]['error']}")
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    a, b = (client.request(BindReuseport("shared"), i) for i in (1, 2))
    maps = client.request(GetSteering("shared"), 3)
    client.request(ListSockets(), 4)
    after = broker.fd_count()
    client.close()
    listeners = [socket.socket(fileno=a.fds[0]), socket.socket(fileno=b.fds[0])]
    try:
        assert (maps.message, len(maps.fds)) == (SteeringMaps("shared"), 2)
        count_map, slots_map = maps.fds
        fill_slot(slots_map, 0, listeners[1].fileno())
        set_count(count_map, 1)
        port = a.message.sockets[0].port
        for _ in range(20):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        assert [accept_all(listener) for listener in listeners] == [0, 20]
    finally:
        close_fds(maps.fds)
        for listener in listeners:
            listener.close()
    assert after == before


def accept_all(listener: socket.socket) -> int:
    """Accept (and close) every connection waiting in ``listener``'s queue: how many."""
    listener.setblocking(False)
    taken = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return taken
        conn.close()
        taken += 1


@pytest.mark.parametrize(("name", "code"), [("nope", "unknown_socket"), ("web", "not_reuseport")])
def test_get_steering_of_a_socket_with_no_steering_group_is_refused(
    broker: RunningBroker, name: str, code: str
) -> None:
    client = Client(broker.socket_path)
    client.hello()
    reply = client.request(GetSteering(name), 5)
    client.close()
    assert (error_code(reply), reply.fds) == (code, ())
    assert_serves(broker)


def test_a_reuseport_socket_added_by_a_reload_has_no_steering(broker: RunningBroker) -> None:
    config = broker.log_path.parent / "chapiteau.ini"
    with open(config, "a") as added:
        added.write("\n[socket:late]\nhost = 127.0.0.1\nport = 0\nso_reuseport = true\n")
    client = Client(broker.socket_path)
    client.hello()
    reloaded = client.request(ReloadConfig(), 6)
    reply = client.request(GetSteering("late"), 7)
    client.close()
    assert reloaded.message == Reloaded(added=("late",))
    assert (error_code(reply), reply.fds) == ("no_steering", ())
    assert any(
        (e.get("event"), e.get("name")) == ("steering_unavailable", "late")
        for e in broker.log_events()
    )


@contextlib.contextmanager
def out_of_fds(broker: RunningBroker) -> Iterator[None]:
    """Lower the broker's RLIMIT_NOFILE so that its next new fd fails with EMFILE."""
    used = {int(fd) for fd in os.listdir(f"/proc/{broker.pid}/fd")}
    lowest_free = min(set(range(len(used) + 1)) - used)
    soft, hard = resource.prlimit(broker.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(broker.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.prlimit(broker.pid, resource.RLIMIT_NOFILE, (soft, hard))


def test_bind_reuseport_without_a_free_fd_is_refused(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.hello()
    with out_of_fds(broker):
        reply = client.request(BindReuseport("shared"), 22)
    client.close()
    assert (error_code(reply), reply.fds) == ("bind_failed", ())
    assert_serves(broker)


def test_fds_the_broker_cannot_install_are_refused(
    broker: RunningBroker, spare_fds: list[int]
) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    with out_of_fds(broker):
        outcome = client.outcome(encode(ListSockets(), 23), spare_fds)
    client.request(ListSockets(), 24)
    after = broker.fd_count()
    client.close()
    assert outcome == refused_or("bad_frame")
    assert after == before
    assert_serves(broker)


# -- malformed frames ------------------------------------------------------------


@pytest.mark.parametrize("size", [MAX_FRAME_BYTES + 1, 3 * MAX_FRAME_BYTES])
def test_oversized_frames_are_refused(broker: RunningBroker, size: int) -> None:
    client = Client(broker.socket_path)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * MAX_FRAME_BYTES)
    payload = b'{"type":"hello","id":1,"versions":[1]}'
    reply = client.raw(frame_of(payload + b" " * (size - HEADER.size - len(payload))))
    client.close()
    assert error_code(reply) == "bad_frame"
    assert_serves(broker)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00",
        b"\x00\x00\x00",
        HEADER.pack(100) + b'{"type":"hello"',
        encode(Hello(), 1)[:-1],
        HEADER.pack(5) + encode(Hello(), 1)[HEADER.size :],
    ],
)
def test_truncated_frames_are_refused(broker: RunningBroker, frame: bytes) -> None:
    client = Client(broker.socket_path)
    reply = client.raw(frame)
    client.close()
    assert (reply.request_id, error_code(reply)) == (0, "bad_frame")
    assert_serves(broker)


@pytest.mark.parametrize(
    "frame",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)),
        frame_of(b"\xff\xfe\xfd"),
        frame_of(b"not json at all"),
        frame_of(b"[" * 100_000),
        frame_of(b'{"type":"hello","id":' + b"9" * 5000 + b',"versions":[1]}'),
        frame_json({"type": "x" * (MAX_FRAME_BYTES // 2), "id": 1}),
        frame_json([1, 2, 3]),
        frame_json({"type": "hello", "id": True, "versions": [1]}),
        frame_json({"type": "hello", "id": 1, "versions": [1], "uid": 0}),
    ],
)
def test_garbage_is_refused(broker: RunningBroker, frame: bytes) -> None:
    client = Client(broker.socket_path)
    reply = client.raw(frame)
    client.close()
    assert error_code(reply) in ("bad_frame", "bad_message")
    assert_serves(broker)


def test_an_empty_datagram_ends_the_connection(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.hello()
    client.send_raw(b"")
    closed = receive(client.sock)
    client.close()
    assert closed is None
    assert_serves(broker)


# -- fds sent to the broker -------------------------------------------------------


@pytest.mark.parametrize(
    "message", [Hello(), ListSockets(), GetSockets(("web",)), BindReuseport("shared")]
)
def test_fds_attached_to_requests_are_closed(
    broker: RunningBroker, spare_fds: list[int], message: Message
) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    outcome = client.outcome(encode(message, 10), spare_fds)
    after = broker.fd_count()
    client.close()
    assert outcome == refused_or("unexpected_fds")
    assert after == before
    assert_serves(broker)


def test_too_many_fds_are_refused_and_closed(broker: RunningBroker, spare_fds: list[int]) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    outcome = client.outcome(encode(ListSockets(), 11), (spare_fds * SCM_MAX_FD)[:SCM_MAX_FD])
    after = broker.fd_count()
    client.close()
    assert outcome == refused_or("bad_frame")
    assert after == before
    assert_serves(broker)


@pytest.mark.parametrize(
    "message",
    [
        Welcome(PROTOCOL_VERSION, 1),
        SocketList(()),
        Reloaded(("web",)),
        Ok(),
        Error("bad_frame", "you first"),
    ],
)
def test_replies_sent_as_requests_are_refused(broker: RunningBroker, message: Message) -> None:
    client = Client(broker.socket_path)
    client.hello()
    reply = client.request(message, 12)
    client.close()
    assert (reply.request_id, error_code(reply)) == (12, "bad_message")
    assert_serves(broker)


def test_a_sockets_reply_sent_with_its_fds_is_refused_and_the_fds_closed(
    broker: RunningBroker, spare_fds: list[int]
) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    info = SocketInfo("web", "AF_INET", "SOCK_STREAM")
    outcome = client.outcome(encode(Sockets((info,) * len(spare_fds)), 13), spare_fds)
    after = broker.fd_count()
    client.close()
    assert outcome == refused_or("unexpected_fds")
    assert after == before
    assert_serves(broker)


@contextlib.contextmanager
def stalled_tcp_connection() -> Iterator[int]:
    """The port of a loopback TCP listener whose connection is never read."""
    with socket.socket() as listener:
        # A tiny receive buffer, passed on to the accepted socket: the window closes at once.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        receiver = None
        try:
            yield listener.getsockname()[1]
        finally:
            with contextlib.suppress(BlockingIOError):
                listener.setblocking(False)
                receiver, _ = listener.accept()
            # Closing with unread data resets the connection: a lingering close ends.
            if receiver is not None:
                receiver.close()


BUSY_FRAME = frame_of(b"[" + b"0," * (MAX_FRAME_BYTES // 2 - 4) + b"0]")
"""A frame the broker takes milliseconds to parse (and answers bad_message)."""


def send_lingering_socket(client: Client, port: int) -> bytes:
    """Connect to ``port``, queue unsendable data, set SO_LINGER {1, 30}, attach the socket
    to a frame for the broker; in a child that exits at once. BUSY_FRAME first keeps the
    broker parsing while the child exits, whose own close never lingers (an exiting process
    does not): the broker's copy is then the last one, and closing it would block 30 s."""

    def send() -> bytes:
        sender = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sender.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.send(b"x" * 65536)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
        # Detached: only the child's exit closes it here, and that close does not linger.
        fd = sender.detach()
        client.send_raw(BUSY_FRAME)
        try:
            client.send_raw(encode(ListSockets(), 1), [fd])
        except PermissionError:
            return REFUSED.encode()
        return b"sent"

    return in_child(send)


def test_a_lingering_socket_sent_to_the_broker_does_not_stall_it(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_FRAME_BYTES)
    client.hello()
    with stalled_tcp_connection() as port:
        outcome = send_lingering_socket(client, port)
        busy = error_code(client.reply())
        if outcome == b"sent":
            assert error_code(client.reply()) == "unexpected_fds"
        listing = client.request(ListSockets(), 2)
        broker.process.send_signal(signal.SIGTERM)
        status = broker.process.wait(5)
    client.close()
    assert (busy, outcome) == ("bad_message", refused_or("sent").encode())
    assert isinstance(listing.message, SocketList)
    assert status == 0


# -- what one peer may hold ----------------------------------------------------------


def waiting_bytes(sock: socket.socket) -> int:
    """Bytes queued for ``sock`` to read (FIONREAD): the broker's reply arrived, unread."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4)))[0]


ALL_THE_FDS = GetSockets(("web",) * MAX_NAMES_PER_REQUEST)


def test_a_peer_that_leaves_its_replies_unread_gets_fds_for_one_request_only(
    broker: RunningBroker,
) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    for request_id in (1, 2, 3):
        client.send_raw(encode(ALL_THE_FDS, request_id))
    # A last request the broker logs: once it is logged, the three before are answered.
    client.send_raw(encode(GetSockets(("nope",)), 4))
    wait_until(
        lambda: any(e.get("code") == "unknown_socket" for e in broker.log_events()),
        TIMEOUT,
        what="the last request answered",
    )
    replies = [client.reply() for _ in range(4)]
    after = broker.fd_count()
    client.close()
    for reply in replies:
        close_fds(reply.fds)
    assert isinstance(replies[0].message, Sockets) and len(replies[0].fds) == 250
    assert [(error_code(r), r.fds) for r in replies[1:3]] == [("fds_in_flight", ())] * 2
    assert after == before
    assert_serves(broker)


def test_peers_together_hold_at_most_max_fds_in_flight_unread(broker: RunningBroker) -> None:
    holders = [Client(broker.socket_path) for _ in range(MAX_FDS_IN_FLIGHT // 250)]
    asker = Client(broker.socket_path)
    for client in (*holders, asker):
        client.hello()
    for holder in holders:
        holder.send_raw(encode(ALL_THE_FDS, 1))
        wait_until(
            lambda holder=holder: waiting_bytes(holder.sock) > 0, TIMEOUT, what="the reply, unread"
        )
    refused = asker.request(GetSockets(("web",)), 2)
    close_fds(holders[0].reply().fds)
    granted = asker.request(GetSockets(("web",)), 3)
    close_fds(granted.fds)
    for client in (*holders, asker):
        client.close()
    assert (error_code(refused), refused.fds) == ("fds_in_flight", ())
    assert isinstance(granted.message, Sockets) and len(granted.fds) == 1
    assert_serves(broker)


def test_a_connection_that_never_says_hello_is_dropped(broker: RunningBroker) -> None:
    silent = Client(broker.socket_path)
    silent.sock.settimeout(HELLO_DEADLINE + TIMEOUT)
    closed = silent.sock.recv(MAX_FRAME_BYTES)
    silent.close()
    assert closed == b""
    assert any(e.get("event") == "peer_dropped" for e in broker.log_events())
    assert_serves(broker)


def test_connections_that_never_say_hello_do_not_lock_the_supervisor_out(
    broker: RunningBroker,
) -> None:
    junk = [Client(broker.socket_path) for _ in range(MAX_PEERS)]
    wait_until(
        lambda: sum(e.get("event") == "peer_accepted" for e in broker.log_events()) == MAX_PEERS,
        TIMEOUT,
        what="every junk connection accepted",
    )
    supervisor = Client(broker.socket_path)
    welcome = supervisor.hello()
    supervisor.close()
    for client in junk:
        client.close()
    assert welcome.broker_pid == broker.pid
    assert_serves(broker)


# -- volume ------------------------------------------------------------------------


def bad_requests(fds: list[int]) -> list[tuple[str, bytes, list[int], str]]:
    """(connection, frame, fds, expected outcome) for every kind of bad request."""
    info = SocketInfo("web", "AF_INET", "SOCK_STREAM")
    noise = random.Random(1234)
    return [
        ("fresh", encode(ListSockets(), 1), [], "not_hello"),
        ("fresh", encode(GetSockets(("web",)), 2), fds[:1], refused_or("unexpected_fds")),
        ("fresh", encode(Hello((99,)), 3), [], "unsupported_version"),
        ("greeted", encode(GetSockets(("nope",)), 4), [], "unknown_socket"),
        (
            "greeted",
            frame_json({"type": "get_sockets", "id": 5, "names": ["a/b"]}),
            [],
            "bad_message",
        ),
        ("greeted", encode(BindReuseport("web"), 6), [], "not_reuseport"),
        ("greeted", encode(Hello(), 7), fds, refused_or("unexpected_fds")),
        ("greeted", encode(ListSockets(), 8), fds[:2], refused_or("unexpected_fds")),
        ("greeted", encode(Sockets((info, info)), 9), fds[:2], refused_or("unexpected_fds")),
        ("greeted", encode(Welcome(1, 1), 10), [], "bad_message"),
        ("greeted", encode(Ok(), 11), fds[:3], refused_or("unexpected_fds")),
        (
            "greeted",
            bytes(noise.randrange(256) for _ in range(64)),
            fds[:1],
            refused_or("bad_frame"),
        ),
        ("greeted", encode(Hello(), 12)[:-3], fds[:2], refused_or("bad_frame")),
        ("greeted", frame_of(b"\xc3\x28"), [], "bad_frame"),
        ("greeted", frame_of(b"[" * 50_000), fds[:1], refused_or("bad_frame")),
        ("greeted", frame_json({"type": "reboot", "id": 13}), fds, refused_or("bad_message")),
        ("greeted", frame_json({"type": "ok", "id": -1}), [], "bad_message"),
        ("greeted", b"", fds[:2], refused_or("unexpected_fds")),
        (
            "greeted",
            frame_json({"type": "get_sockets", "id": 15, "names": ["web"] * 251}),
            [],
            "too_many",
        ),
    ]


FRESH_EVERY = 250
"""Requests per un-greeted connection: far fewer than the hello deadline allows, even under load."""


@pytest.mark.timeout(180)
def test_ten_thousand_bad_requests_leak_no_fd(broker: RunningBroker, spare_fds: list[int]) -> None:
    clients = {"fresh": Client(broker.socket_path), "greeted": Client(broker.socket_path)}
    clients["greeted"].hello()
    before = broker.fd_count()
    kinds = bad_requests(spare_fds)
    overflow = (spare_fds * SCM_MAX_FD)[:SCM_MAX_FD]
    wrong = []
    for i in range(10_000):
        if i % FRESH_EVERY == 0:
            # Un-greeted connections are dropped after HELLO_DEADLINE: a new one in time.
            clients["fresh"].close()
            clients["fresh"] = Client(broker.socket_path)
        if i % 500 == 0:
            connection, frame, fds = "greeted", encode(ListSockets(), 14), overflow
            expected = refused_or("bad_frame")
        else:
            connection, frame, fds, expected = kinds[i % len(kinds)]
        outcome = clients[connection].outcome(frame, fds)
        if outcome != expected:
            wrong.append((i, expected, outcome))
    after = broker.fd_count()
    for client in clients.values():
        client.close()
    assert wrong == []
    assert after == before
    assert_serves(broker)


# -- connect mode --------------------------------------------------------------------


def test_peer_from_another_uid_is_closed_without_a_reply(broker: RunningBroker) -> None:
    outcome = in_child(lambda: _intrude(broker.socket_path))
    assert outcome in (b"closed", b"reset")

    def rejected() -> bool:
        return any(
            e.get("event") == "peer_rejected" and e.get("uid") == INTRUDER_UID
            for e in broker.log_events()
        )

    wait_until(rejected, TIMEOUT, what="a peer_rejected log line")
    assert_serves(broker)


def _intrude(path: str) -> bytes:
    """In the forked child: become another user of the service group, connect, say hello."""
    os.setgroups([NOGROUP])
    os.setgid(NOGROUP)
    os.setuid(INTRUDER_UID)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(path)
    except PermissionError:
        return b"no access to the socket"
    try:
        sock.send(encode(Hello(), 1))
        data = sock.recv(MAX_FRAME_BYTES)
    except (ConnectionResetError, BrokenPipeError):
        return b"reset"
    except TimeoutError:
        return b"timeout"
    return b"closed" if data == b"" else b"reply: " + data


def test_root_peer_is_accepted_in_connect_mode(broker: RunningBroker) -> None:
    assert os.geteuid() == 0
    assert_serves(broker)


def test_protocol_error_lines_are_logged_not_fatal(broker: RunningBroker) -> None:
    client = Client(broker.socket_path)
    client.raw(b"\x00")
    client.close()
    wait_until(
        lambda: any(e.get("event") == "bad_frame" for e in broker.log_events()),
        TIMEOUT,
        what="a bad_frame log line",
    )
    assert broker.process.poll() is None
