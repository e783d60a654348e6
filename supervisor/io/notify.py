"""The supervisor's NOTIFY_SOCKET: sd_notify messages from workers, each sender checked.

Workers of a watcher with ``readiness = notify`` or ``watchdog_sec`` get
``NOTIFY_SOCKET`` in their environment and speak systemd's notify protocol to
it (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ...): one datagram per
message, newline-separated ``KEY=VALUE`` assignments.

The address is an abstract UNIX name with a random part,
``@chapiteau-notify/PID/RANDOM``, made by the first supervisor that needs one
(PID is its pid). Workers keep it in their environment for life, so the
supervisor records it in the snapshot it leaves to its next generation
(`chapiteau.supervisor.state`), which binds the same name again (the previous
one is dead, so the name is free): adopted workers go on being heard. Should
another process have taken the name in the gap, the next generation makes a
new one, and the adopted workers that can no longer report are restarted by
their watchdog. Why not a path:
workers may run as any user (``uid``), and a path they can all send to would
need a directory writable or searchable by all of them; an abstract name needs
no file and vanishes with the supervisor. Who else can send: any process of
the same network namespace, since abstract names are listed in
/proc/net/unix; the random part only keeps another process from taking the
name first, it is no secret. So every datagram's sender is identified by the
kernel (SO_PASSCRED: SCM_CREDENTIALS carries the sender's pid, which an
unprivileged sender cannot forge) and accepted only when that pid is a worker
of this supervisor or a descendant of one (found through the ``ppid`` of
/proc/PID/stat, at most `MAX_ANCESTRY` generations up): a shell wrapper's
children, gunicorn's master (which is the worker itself), a server that a
worker forked. A process that a worker left behind and that was re-parented
to the supervisor (a daemon that double-forked) is no longer in a worker's
tree and is not heard.

Anything else is dropped with a rate-limited debug log, never an exception in
the loop: a datagram without credentials or from a stranger, one larger than
`MAX_MESSAGE` bytes (systemd's limit), one that is not UTF-8 ``KEY=VALUE``
lines; file descriptors sent along (FDSTORE) are closed at once.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import secrets
import socket
import struct
from collections.abc import Callable, Mapping

import structlog

from chapiteau.supervisor.children.process_tree import parent_of

log = structlog.get_logger("chapiteau.supervisor")

MAX_MESSAGE = 4096
"""The largest datagram accepted, as systemd's (a bigger one is dropped whole)."""
MAX_ANCESTRY = 32
"""How many parents up a sender may be from its worker."""
MAX_BATCH = 64
"""Datagrams read per wake-up, so that a flood cannot hold the loop."""
DROP_LOG_INTERVAL = 1.0
"""At most one debug line per this many seconds about dropped datagrams."""

_UCRED = struct.Struct("3i")
_MAX_FDS = 64
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(_MAX_FDS * 4)

Deliver = Callable[[int, Mapping[str, str]], None]
"""Called with the worker's pid and the message's assignments."""


class Malformed(ValueError):
    """A datagram that is not UTF-8 ``KEY=VALUE`` lines; ``str()`` says why."""


def parse_message(data: bytes) -> dict[str, str]:
    """The assignments of one sd_notify datagram (the last one wins for a repeated key)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("not UTF-8") from None
    fields = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum() or not key.isupper():
            raise Malformed(f"{line[:40]!r} is not KEY=VALUE")
        fields[key] = value
    if not fields:
        raise Malformed("empty")
    return fields


def worker_of(
    pid: int, is_worker: Callable[[int], bool], parent: Callable[[int], int | None] = parent_of
) -> int | None:
    """The worker whose tree ``pid`` belongs to (itself included), or None."""
    for _ in range(MAX_ANCESTRY + 1):
        if is_worker(pid):
            return pid
        up = parent(pid) if pid > 1 else None
        if up is None or up == pid:
            return None
        pid = up
    return None


class NotifySocket:
    """A bound datagram socket, read from the loop; delivers checked messages."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        is_worker: Callable[[int], bool],
        deliver: Deliver,
        address: str | None = None,
    ) -> None:
        """Bound to ``address`` (an abstract name, "@...", as `address` gives it) when
        given, else to a new name; OSError when it cannot be bound (EADDRINUSE: taken)."""
        self._loop = loop
        self._is_worker = is_worker
        self._deliver = deliver
        self._dropped = 0
        self._last_log: float | None = None
        self._sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if address is None:
                address = f"@chapiteau-notify/{os.getpid()}/{secrets.token_hex(8)}"
            self._sock.bind(b"\0" + address[1:].encode())
        except OSError:
            self._sock.close()
            raise
        self.address = address
        """The value of NOTIFY_SOCKET ("@": an abstract name, as systemd writes it)."""
        loop.add_reader(self._sock.fileno(), self._readable)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _readable(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                data, ancillary, flags, _ = self._sock.recvmsg(MAX_MESSAGE + 1, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop("receive_failed", error=str(exc))
                return
            self._received(data, ancillary, flags)

    def _received(self, data: bytes, ancillary: list[tuple[int, int, bytes]], flags: int) -> None:
        sender = None
        for level, kind, payload in ancillary:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_RIGHTS:
                _close_fds(payload)
            elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                sender = _UCRED.unpack_from(payload)[0]
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            self._drop("oversize", sender=sender)
            return
        if sender is None or sender <= 0:
            self._drop("no_credentials")
            return
        worker = worker_of(sender, self._is_worker)
        if worker is None:
            self._drop("stranger", sender=sender)
            return
        try:
            fields = parse_message(data)
        except Malformed as exc:
            self._drop("malformed", sender=sender, error=str(exc))
            return
        try:
            self._deliver(worker, fields)
        except Exception as exc:
            log.error("notify_delivery_failed", pid=worker, error=repr(exc))

    def _drop(self, reason: str, **context: object) -> None:
        self._dropped += 1
        now = self._loop.time()
        if self._last_log is not None and now - self._last_log < DROP_LOG_INTERVAL:
            return
        self._last_log = now
        log.debug("notify_dropped", reason=reason, dropped=self._dropped, **context)
        self._dropped = 0


def _close_fds(payload: bytes) -> None:
    fds = array.array("i")
    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
