"""Take a dead broker's listening sockets back from its orphaned workers, then retire them.

When a broker and its supervisor die together (kill -9, the OOM killer, a
crash), their workers keep running and keep the listening sockets open: a new
broker on the same config would fail on EADDRINUSE while they serve unmanaged.
Started as root, before binding, the new broker instead:

1. finds the candidates (`find_orphans`): processes of the service user whose
   environment holds ``CHAPITEAU_INSTANCE=<real path of this config>``, which
   the supervisor and every worker get. Each process is pinned by a pidfd *before* its
   /proc/PID/environ is read (a bounded read, one entry matched exactly) and
   found alive after, so a pid reused meanwhile is never taken for an orphan.
   The mark only selects candidates: any process can write its environment.
2. copies those of their sockets that the kernel's tables (/proc/self/net)
   list on a configured port (`recover_sockets`, pidfd_getfd(2):
   CAP_SYS_PTRACE, which the broker has only as root, before confinement
   drops it for good) and keeps, for each inet section without ``so_reuseport``, the first socket
   that a broker created (its owner is root or the broker's account: no
   worker can create such a socket), in this network namespace, that fits the
   section (broker/inherited.py: listening, family, type, address). So the
   worst a process faking the mark can do is hand back the broker's own socket.
3. refuses to go on when such a socket is also held by a process that is
   not a candidate: another chapiteau still running on this config, say.

Unix sockets are not recovered (their bound name does not prove which file
they are): ``replace = true`` lets the new broker bind the path again.

Once the new supervisor is ready, `Retirement` signals every candidate through
its pidfd (no recycled pid is ever hit): SIGTERM, then SIGKILL after
``[broker] orphan_timeout``. Until then the orphans serve, so nothing is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Collection, Iterable, Iterator

from chapiteau.broker.binding import BindError, BoundSocket
from chapiteau.broker.config import SocketSpec
from chapiteau.broker.event_log import log
from chapiteau.broker.inherited import adopt, mismatch
from chapiteau.protocol.constants import INSTANCE_VARIABLE
from chapiteau.protocol.records import Record
from chapiteau.protocol.syscall import syscall

MAX_ENVIRON_BYTES = 256 * 1024
"""Read of a candidate's environment: the mark is looked for in this much, no more."""
MAX_FDS_EXAMINED = 4096
"""Sockets of one process copied and examined at most."""
PIDFD_GETFD = 438
"""The system call's number: the same on every architecture (Linux 5.6)."""
SIOCGSKNS = 0x894C
"""ioctl: an fd of the network namespace a socket lives in."""


def instance_mark(config_path: str) -> str:
    """The value of CHAPITEAU_INSTANCE for the tree started from ``config_path``."""
    return os.path.realpath(config_path)


class Orphan(Record):
    """A process of a previous life, pinned by its pidfd."""

    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def signal(self, signum: int) -> bool:
        """Send ``signum`` (0: only check); False once the process is gone."""
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        os.close(self.pidfd)


def find_orphans(instance: str, uid: int | None = None, proc: str = "/proc") -> list[Orphan]:
    """Every live process but this one whose environment marks it as of ``instance``.

    ``uid``: only processes of that user are looked at (the service user's: the
    supervisor and its workers run as nobody else), so that root neither reads
    the memory of every process on the machine nor spends a start-up doing it.
    """
    mark = f"{INSTANCE_VARIABLE}={instance}".encode()
    found = []
    for pid in _pids(proc):
        if uid is not None and _owner(f"{proc}/{pid}") != uid:
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        orphan = Orphan(pid, pidfd)
        if _marked(f"{proc}/{pid}/environ", mark) and orphan.signal(0):
            found.append(orphan)
        else:
            orphan.close()
    return found


def _owner(path: str) -> int | None:
    """The uid a /proc/PID directory belongs to (the process's effective uid)."""
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def _pids(proc: str) -> Iterator[int]:
    own = os.getpid()
    for entry in os.listdir(proc):
        if entry.isdigit() and int(entry) != own:
            yield int(entry)


def _marked(path: str, mark: bytes) -> bool:
    """Whether one entry of the environment file at ``path`` is exactly ``mark``."""
    try:
        with open(path, "rb", buffering=0) as environ:
            data = environ.read(MAX_ENVIRON_BYTES)
    except OSError:
        return False
    entries = data.split(b"\0")
    if len(data) == MAX_ENVIRON_BYTES:
        entries.pop()  # possibly cut short
    return mark in entries


def recover_sockets(
    orphans: Iterable[Orphan], specs: Iterable[SocketSpec], creators: Collection[int]
) -> dict[str, BoundSocket]:
    """The listening sockets of ``specs`` found in ``orphans``, by section name.

    ``creators`` are the uids a socket of the broker's is owned by (root, the
    broker's account). BindError when a recovered socket is also held by a
    process that is no orphan; nothing is then kept.
    """
    orphans = list(orphans)
    wanted = {
        spec.name: spec for spec in specs if spec.family != socket.AF_UNIX and not spec.so_reuseport
    }
    found: dict[str, tuple[Orphan, socket.socket]] = {}
    ports = {spec.port for spec in wanted.values()}
    # No orphan (a first start): the tables of every socket of the machine are not read.
    inodes = inet_sockets(set() if 0 in ports else ports) if wanted and orphans else set()
    try:
        for orphan in orphans:
            if len(found) == len(wanted):
                break
            for sock in _sockets_of(orphan, inodes):
                name = _fitting(sock, wanted, found, creators)
                if name is None:
                    sock.close()
                else:
                    found[name] = (orphan, sock)
        _refuse_other_holders(found, wanted, {orphan.pid for orphan in orphans})
    except BaseException:
        for _, sock in found.values():
            sock.close()
        raise
    recovered = {name: adopt(sock, wanted[name]) for name, (_, sock) in found.items()}
    for name, (orphan, sock) in found.items():
        log.info(
            "socket_recovered", name=name, pid=orphan.pid, inode=os.fstat(sock.fileno()).st_ino
        )
    return recovered


def _sockets_of(orphan: Orphan, inodes: Collection[str]) -> Iterator[socket.socket]:
    """A copy of each socket of ``orphan`` among ``inodes`` (pidfd_getfd: the same socket).

    Only those: a copy of any other socket the process chose could block the
    broker when it closes it (SO_LINGER with unsent data).
    """
    for fd in _socket_fds(orphan.pid, inodes)[:MAX_FDS_EXAMINED]:
        try:
            copy = pidfd_getfd(orphan.pidfd, fd)
        except OSError:
            continue  # closed meanwhile, or the process is gone
        try:
            yield socket.socket(fileno=copy)
        except OSError:
            os.close(copy)  # its fd number now holds something else


def _socket_fds(pid: int, inodes: Collection[str]) -> list[int]:
    return [fd for fd, target in _fd_links(pid) if target in inodes]


def inet_sockets(ports: Collection[int], proc_net: str = "/proc/self/net") -> set[str]:
    """``socket:[INODE]`` of each TCP and UDP socket of this network namespace on ``ports``.

    Empty ``ports``: on any port. From the kernel's tables, which no process can
    write: the candidates for recovery, before any socket is copied.
    """
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"{proc_net}/{table}") as lines:
                next(lines, None)  # the header
                # A line at a time: a busy machine has tens of thousands of sockets, and
                # what the broker's start-up holds at once, its memory keeps for good.
                for line in lines:
                    row = line.split()
                    with contextlib.suppress(IndexError, ValueError):
                        port = int(row[1].rsplit(":", 1)[1], 16)
                        if not ports or port in ports:
                            found.add(f"socket:[{int(row[9])}]")
        except OSError:
            continue  # no IPv6, say
    return found


def _fd_links(pid: int) -> list[tuple[int, str]]:
    """(fd, link target) of each fd of ``pid``; the link is the kernel's, not the process's."""
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    links = []
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            links.append((int(name), os.readlink(f"{directory}/{name}")))
    return links


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy, in this process (close-on-exec), of the open file ``fd`` of ``pidfd``'s process."""
    return syscall(PIDFD_GETFD, pidfd, fd, 0)


def _fitting(
    sock: socket.socket,
    wanted: dict[str, SocketSpec],
    found: Collection[str],
    creators: Collection[int],
) -> str | None:
    """The name of the section still wanted that ``sock`` is the broker's socket for, or None."""
    if os.fstat(sock.fileno()).st_uid not in creators or not _in_this_network(sock):
        return None
    for name, spec in wanted.items():
        if name not in found and mismatch(sock, spec) is None:
            return name
    return None


def _in_this_network(sock: socket.socket) -> bool:
    try:
        namespace = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return False
    try:
        return os.fstat(namespace).st_ino == os.stat("/proc/self/ns/net").st_ino
    finally:
        os.close(namespace)


def _refuse_other_holders(
    found: dict[str, tuple[Orphan, socket.socket]],
    specs: dict[str, SocketSpec],
    orphans: Collection[int],
) -> None:
    """BindError when a process that is no orphan (nor this one) holds a recovered socket."""
    inodes = {
        f"socket:[{os.fstat(sock.fileno()).st_ino}]": name for name, (_, sock) in found.items()
    }
    for pid in _pids("/proc") if inodes else ():
        if pid in orphans:
            continue
        for _, target in _fd_links(pid):
            if target in inodes:
                raise BindError(
                    f"{specs[inodes[target]].where}: its socket is also held by pid {pid}, "
                    "which is no orphaned worker of this config (another chapiteau still "
                    "running on it?); stop that first"
                )


class Retirement:
    """The orphans of a previous life, stopped once this broker's own supervisor is ready."""

    def __init__(self, orphans: Iterable[Orphan]) -> None:
        self.orphans = {orphan.pidfd: orphan for orphan in orphans}
        self.started = False
        self.kill_at: float | None = None

    def start(self, timeout: float) -> None:
        """SIGTERM to each orphan now; `kill` is due ``timeout`` seconds later.

        The caller then reports each exit with `exited` (a pidfd becomes
        readable when its process exits).
        """
        self.started = True
        log.info("orphans_retiring", pids=sorted(o.pid for o in self.orphans.values()))
        for orphan in self.orphans.values():
            orphan.signal(signal.SIGTERM)  # one gone already: its pidfd reports it, as any other
        self.kill_at = time.monotonic() + timeout

    def kill(self) -> None:
        """SIGKILL to each orphan still alive."""
        self.kill_at = None
        for orphan in self.orphans.values():
            if orphan.signal(signal.SIGKILL):
                log.warning("orphan_killed", pid=orphan.pid)

    def exited(self, pidfd: int) -> None:
        """The orphan of ``pidfd`` is gone (its pidfd became readable)."""
        orphan = self.orphans.pop(pidfd)
        orphan.close()
        log.info("orphan_exited", pid=orphan.pid)
        if not self.orphans:
            self.kill_at = None
            log.info("orphans_retired")

    def close(self) -> None:
        """Forget the orphans still alive (the broker stops)."""
        for orphan in self.orphans.values():
            orphan.close()
        self.orphans.clear()
        self.kill_at = None
