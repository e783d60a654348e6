"""The real broker, in connect mode, against a hostile client: it answers, closes, and goes on.

Each test starts ``python -m chapiteau.broker`` on an INI written for it and
talks raw SEQPACKET to its socket path. After every attack the broker must
still answer a fresh, valid hello + list_sockets, and it must hold no fd it
did not hold before (counted in /proc/<pid>/fd).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from chapiteau.protocol.broker_messages import (
    HEADER,
    MAX_FRAME_BYTES,
    MAX_NAME_BYTES,
    PROTOCOL_VERSION,
    BindReuseport,
    Error,
    GetSockets,
    Hello,
    ListSockets,
    Message,
    Ok,
    Reloaded,
    SocketInfo,
    SocketList,
    Sockets,
    Welcome,
    encode,
)
from chapiteau.protocol.channel import Received, close_fds, receive

TIMEOUT = 10.0
SCM_MAX_FD = 253
INTRUDER_UID = 4321
"""Not root and not the service user (nobody); let into the service group to reach the socket."""
NOGROUP = 65534


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
        events = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events


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


def error_code(received: Received) -> str:
    assert isinstance(received.message, Error), received.message
    return received.message.code


def frame_of(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def frame_json(obj: object) -> bytes:
    return frame_of(json.dumps(obj).encode())


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


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
        wait_for(lambda: _listening(running), "the broker to listen")
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
        reply = client.request(ListSockets(), 23, spare_fds)
    client.request(ListSockets(), 24)
    after = broker.fd_count()
    client.close()
    assert error_code(reply) == "bad_frame"
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
    reply = client.request(message, 10, spare_fds)
    after = broker.fd_count()
    client.close()
    assert (error_code(reply), reply.fds) == ("unexpected_fds", ())
    assert after == before
    assert_serves(broker)


def test_too_many_fds_are_refused_and_closed(broker: RunningBroker, spare_fds: list[int]) -> None:
    client = Client(broker.socket_path)
    client.hello()
    before = broker.fd_count()
    fds = array.array("i", spare_fds * SCM_MAX_FD)[:SCM_MAX_FD]
    client.sock.sendmsg([encode(ListSockets(), 11)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    reply = client.reply()
    after = broker.fd_count()
    client.close()
    assert error_code(reply) == "bad_frame"
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
    reply = client.request(Sockets((info,) * len(spare_fds)), 13, spare_fds)
    after = broker.fd_count()
    client.close()
    assert error_code(reply) == "unexpected_fds"
    assert after == before
    assert_serves(broker)


# -- volume ------------------------------------------------------------------------


def bad_requests(fds: list[int]) -> list[tuple[str, bytes, list[int], str]]:
    """(connection, frame, fds, expected error code) for every kind of bad request."""
    info = SocketInfo("web", "AF_INET", "SOCK_STREAM")
    noise = random.Random(1234)
    return [
        ("fresh", encode(ListSockets(), 1), [], "not_hello"),
        ("fresh", encode(GetSockets(("web",)), 2), fds[:1], "unexpected_fds"),
        ("fresh", encode(Hello((99,)), 3), [], "unsupported_version"),
        ("greeted", encode(GetSockets(("nope",)), 4), [], "unknown_socket"),
        (
            "greeted",
            frame_json({"type": "get_sockets", "id": 5, "names": ["a/b"]}),
            [],
            "bad_message",
        ),
        ("greeted", encode(BindReuseport("web"), 6), [], "not_reuseport"),
        ("greeted", encode(Hello(), 7), fds, "unexpected_fds"),
        ("greeted", encode(ListSockets(), 8), fds[:2], "unexpected_fds"),
        ("greeted", encode(Sockets((info, info)), 9), fds[:2], "unexpected_fds"),
        ("greeted", encode(Welcome(1, 1), 10), [], "bad_message"),
        ("greeted", encode(Ok(), 11), fds[:3], "unexpected_fds"),
        ("greeted", bytes(noise.randrange(256) for _ in range(64)), fds[:1], "bad_frame"),
        ("greeted", encode(Hello(), 12)[:-3], fds[:2], "bad_frame"),
        ("greeted", frame_of(b"\xc3\x28"), [], "bad_frame"),
        ("greeted", frame_of(b"[" * 50_000), fds[:1], "bad_frame"),
        ("greeted", frame_json({"type": "reboot", "id": 13}), fds, "bad_message"),
        ("greeted", frame_json({"type": "ok", "id": -1}), [], "bad_message"),
        ("greeted", b"", fds[:2], "unexpected_fds"),
        (
            "greeted",
            frame_json({"type": "get_sockets", "id": 15, "names": ["web"] * 251}),
            [],
            "too_many",
        ),
    ]


@pytest.mark.timeout(180)
def test_ten_thousand_bad_requests_leak_no_fd(broker: RunningBroker, spare_fds: list[int]) -> None:
    clients = {"fresh": Client(broker.socket_path), "greeted": Client(broker.socket_path)}
    clients["greeted"].hello()
    before = broker.fd_count()
    kinds = bad_requests(spare_fds)
    overflow = array.array("i", spare_fds * SCM_MAX_FD)[:SCM_MAX_FD]
    wrong = []
    for i in range(10_000):
        if i % 500 == 0:
            clients["greeted"].sock.sendmsg(
                [encode(ListSockets(), 14)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, overflow)]
            )
            reply, expected = clients["greeted"].reply(), "bad_frame"
        else:
            connection, frame, fds, expected = kinds[i % len(kinds)]
            reply = clients[connection].raw(frame, fds)
        if not isinstance(reply.message, Error) or reply.message.code != expected or reply.fds:
            wrong.append((i, expected, reply))
    after = broker.fd_count()
    for client in clients.values():
        client.close()
    assert wrong == []
    assert after == before
    assert_serves(broker)


# -- connect mode --------------------------------------------------------------------


def test_peer_from_another_uid_is_closed_without_a_reply(broker: RunningBroker) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        outcome = b"crashed"
        try:
            outcome = _intrude(broker.socket_path)
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as result:
        outcome = result.read()
    os.waitpid(pid, 0)
    assert outcome in (b"closed", b"reset")

    def rejected() -> bool:
        return any(
            e.get("event") == "peer_rejected" and e.get("uid") == INTRUDER_UID
            for e in broker.log_events()
        )

    wait_for(rejected, "a peer_rejected log line")
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
    wait_for(
        lambda: any(e.get("event") == "bad_frame" for e in broker.log_events()),
        "a bad_frame log line",
    )
    assert broker.process.poll() is None
