"""Bind the listening sockets that the configuration describes.

Each failure becomes a BindError with one line for the operator: which socket,
which address, what went wrong and how to fix it. Unix socket paths are
handled with care because the broker is root (rules in broker/safe_paths.py):
the path's directory is opened through verified fds and must not be writable
by the service user; the socket is bound inside that directory fd; an existing
socket file is replaced only when nothing answers on it (stale) or the
operator asked for it with ``replace``, and nothing else is ever removed; the
file is later changed or removed only while it still is the inode bound.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable

from chapiteau.broker.config import SocketSpec
from chapiteau.broker.event_log import log
from chapiteau.broker.privileges import ServiceUser
from chapiteau.broker.safe_paths import Directory, Entry, UnsafePathError, open_parent
from chapiteau.broker.steering import Steering
from chapiteau.protocol.broker_messages import SocketInfo
from chapiteau.protocol.records import Record

LISTENING_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)


class BindError(Exception):
    """A socket of the configuration could not be bound; the message says why and what to do."""


class BoundSocket(Record):
    """A socket the broker bound, with what it needs to describe and remove it."""

    __slots__ = ("spec", "sock", "path", "steering")

    def __init__(
        self,
        spec: SocketSpec,
        sock: socket.socket,
        path: Entry | None = None,
        steering: Steering | None = None,
    ) -> None:
        self.spec = spec
        self.sock = sock
        # A unix socket's file, held by its directory fd and inode.
        self.path = path
        # An so_reuseport master's program and maps, attached to each sibling (broker/steering.py).
        self.steering = steering

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def info(self) -> SocketInfo:
        """The protocol's description of this socket (the real port once bound)."""
        host: str | None = None
        port: int | None = None
        if self.spec.family != socket.AF_UNIX:
            host, port = self.sock.getsockname()[:2]
        return SocketInfo(
            name=self.spec.name,
            family=self.spec.family_name,
            type=self.spec.type_name,
            host=host,
            port=port,
            path=self.spec.path,
            backlog=self.spec.backlog,
            blocking=self.spec.blocking,
            reuseport=self.spec.so_reuseport,
            inode=os.fstat(self.fd).st_ino,
        )

    def close(self) -> None:
        """Close the socket and remove its file if that still is this socket's; never raises.

        A file that cannot be removed (its directory made read-only, a
        sandbox) is logged and left: the next start replaces a stale socket.
        """
        if self.path is not None:
            release(self.path)
        if self.steering is not None:
            self.steering.close()
        self.sock.close()


def release(entry: Entry) -> None:
    """Remove a socket file the broker bound, if it is still that file, and close its directory.

    Never raises: a failure is logged, and the broker goes on.
    """
    try:
        if not entry.remove():
            log.warning("socket_file_kept", path=entry.path, reason="no longer the bound socket")
    except OSError as exc:
        log.warning("socket_file_not_removed", path=entry.path, error=exc.strerror or str(exc))
    finally:
        entry.directory.close()


def bind_master(spec: SocketSpec, user: ServiceUser) -> BoundSocket:
    """Bind the socket the broker keeps for ``spec``; ``user`` is the service user to guard against.

    An SO_REUSEPORT master is bound (so port 0 becomes a real port that every
    worker's own socket then shares) but never listens: a listening master
    that no worker accepts on would take its share of connections and let them
    hang.
    """
    if spec.family == socket.AF_UNIX:
        return _bind(spec, lambda sock: _bind_socket_file(sock, spec, user))
    return _bind(
        spec, lambda sock: _bind_inet(sock, spec, resolve(spec)), listen=not spec.so_reuseport
    )


def _bind_socket_file(sock: socket.socket, spec: SocketSpec, user: ServiceUser) -> Entry:
    """Bind a [socket:*] unix socket, then give its file the configured owner, group and mode.

    With ``mode``, the file is bound with no permission at all (umask 777) and
    opened only by the chmod: no client of the wrong user can connect between
    the bind and the change.
    """
    assert spec.path is not None
    umask = spec.umask if spec.mode is None else 0o777
    entry = bind_unix(sock, spec.path, user, umask, spec.replace)
    if spec.mode is None and not spec.owned:
        return entry
    try:
        entry.change(
            mode=spec.mode,
            uid=-1 if spec.owner is None else spec.owner,
            gid=-1 if spec.group is None else spec.group,
        )
    except OSError as exc:
        release(entry)
        hint = "; only root can give a file to another user" if spec.owned else ""
        raise BindError(
            f"cannot set the owner, group or mode of {spec.path}: {exc.strerror or exc}{hint}"
        ) from None
    return entry


def bind_reuseport_sibling(master: BoundSocket) -> BoundSocket:
    """Bind and listen one more SO_REUSEPORT socket on the master's address (one per worker).

    The master's steering program, if it has one, is attached to it: a sibling
    that would escape it is closed, and the request fails like a bind.
    """
    address = master.sock.getsockname()
    sibling = _bind(master.spec, lambda sock: _bind_inet(sock, master.spec, address))
    if master.steering is not None:
        try:
            master.steering.attach(sibling.sock)
        except OSError as exc:
            sibling.close()
            raise BindError(
                f"{master.spec.where}: cannot attach the steering program: {exc.strerror or exc}"
            ) from None
    return sibling


def _bind(
    spec: SocketSpec, bind_address: Callable[[socket.socket], Entry | None], listen: bool = True
) -> BoundSocket:
    """Create and configure the socket, bind it with ``bind_address``, listen unless told not to."""
    try:
        sock = socket.socket(spec.family, spec.type, spec.proto)
    except OSError as exc:
        raise BindError(
            f"{spec.where}: cannot create a {spec.family_name} {spec.type_name} socket "
            f"(proto {spec.proto}): {exc.strerror}"
        ) from None
    path = None
    try:
        _configure(sock, spec)
        path = bind_address(sock)
        if listen and spec.type in LISTENING_TYPES:
            sock.listen(spec.backlog)
        sock.setblocking(spec.blocking)
    except BindError as exc:
        abandon(sock, path)
        raise BindError(f"{spec.where}: {exc}") from None
    except OSError as exc:
        # What the steps above do not word themselves: setsockopt(), listen().
        abandon(sock, path)
        raise BindError(f"{spec.where}: {exc.strerror or exc}") from None
    except BaseException:
        abandon(sock, path)
        raise
    return BoundSocket(spec, sock, path)


def abandon(sock: socket.socket, path: Entry | None) -> None:
    """Close a socket that will not be used, and release its file if it has one."""
    if path is not None:
        release(path)
    sock.close()


def resolve(spec: SocketSpec) -> tuple:
    """The first address of the socket's family that ``host`` resolves to."""
    # An ASCII name as bytes: given a str, getaddrinfo loads the idna codec (with stringprep
    # and unicodedata, a quarter MiB the broker would keep for good), even for 127.0.0.1.
    host = spec.host.encode() if spec.host.isascii() else spec.host
    try:
        infos = socket.getaddrinfo(host, spec.port, spec.family, spec.type)
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve host {spec.host!r}: {exc.strerror}") from None
    for family, _, _, _, address in infos:
        if family == spec.family:
            return address
    raise BindError(f"host {spec.host!r} has no {spec.family_name} address")


def _configure(sock: socket.socket, spec: SocketSpec) -> None:
    if spec.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if spec.so_reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if spec.interface:
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, spec.interface.encode() + b"\0"
            )
        except OSError as exc:
            raise BindError(
                f"cannot bind to interface {spec.interface!r}: {exc.strerror}"
            ) from None


def _bind_inet(sock: socket.socket, spec: SocketSpec, address: tuple) -> None:
    where = f"cannot bind {_show(address)}"
    try:
        sock.bind(address)
    except PermissionError:
        port = address[1]
        hint = (
            "ports below 1024 need root: start chapiteau as root (it drops its privileges "
            "after binding) or choose a port >= 1024"
            if 0 < port < 1024
            else "permission denied"
        )
        raise BindError(f"{where}: {hint}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BindError(
                f"{where}: address already in use; find the owner with: "
                f"ss -ltnp 'sport = :{address[1]}'"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BindError(f"{where}: no local interface has this address") from None
        raise BindError(f"{where}: {exc.strerror or exc}") from None


def bind_unix(
    sock: socket.socket, path: str, user: ServiceUser, umask: int, replace: bool | None
) -> Entry:
    """Bind ``sock`` to ``path`` inside its verified directory; the file is then an Entry.

    An existing socket file is removed first when nothing answers on it (a
    stale file of a previous run) or when ``replace`` says to take the path
    over (None: the path has no such option, as ``[broker] socket_path``);
    anything else there is a BindError. The mode comes from ``umask`` at bind
    time. BindError for everything the operator must fix.
    """
    where = f"cannot bind {path}"
    try:
        directory, name = open_parent(path, user)
    except UnsafePathError as exc:
        raise BindError(f"cannot bind {exc}") from None
    except OSError as exc:
        raise BindError(f"{where}: {exc.strerror or exc}") from None
    try:
        existing = _existing_socket(directory, name, sock.type, where)
        if existing is not None:
            if existing[1] and not replace:
                hint = "" if replace is None else ", or set replace = true to take the path over"
                raise BindError(
                    f"{where}: something is listening there (another chapiteau?); "
                    f"stop it first{hint}"
                )
            Entry.of(directory, name, existing[0]).remove()
        previous = os.umask(umask)
        try:
            sock.bind(directory.link(name))
        finally:
            os.umask(previous)
        bound = directory.stat(name)
        if bound is None or not stat.S_ISSOCK(bound.st_mode):
            raise BindError(f"{where}: the socket file vanished right after bind")
    except BindError:
        directory.close()
        raise
    except OSError as exc:
        directory.close()
        raise BindError(f"{where}: {exc.strerror or exc}") from None
    return Entry.of(directory, name, bound)


def check_unix_path(path: str, user: ServiceUser, kind: int) -> None:
    """BindError for what would make binding ``path`` fail or unsafe; changes nothing."""
    try:
        directory, name = open_parent(path, user)
    except UnsafePathError as exc:
        raise BindError(f"cannot bind {exc}") from None
    with directory:
        _existing_socket(directory, name, kind, f"cannot bind {path}")


def _existing_socket(
    directory: Directory, name: str, kind: int, where: str
) -> tuple[os.stat_result, bool] | None:
    """What is at ``name``: None, or a socket file and whether something answers on it.

    Anything else there (a file, a directory, a symlink: lstat, never followed)
    is a BindError: the broker is root and removes only sockets.
    """
    st = directory.stat(name)
    if st is None:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"{where}: the path exists and is not a socket; refusing to remove it")
    return st, _answers(directory.link(name), kind)


def _answers(path: str, kind: int) -> bool:
    """True when a socket listens at ``path``; False only for a stale file (refused connection).

    Non-blocking, so that a live server with a full queue cannot stall the broker.
    """
    with socket.socket(socket.AF_UNIX, kind) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
    return True


def _show(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
