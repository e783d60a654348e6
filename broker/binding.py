"""Bind the listening sockets that the configuration describes.

Each failure becomes a BindError with one line for the operator: which socket,
which address, what went wrong and how to fix it. Unix socket paths are
handled with care because the broker is root: an existing path is only ever
removed when it is a socket (lstat, so a symlink is never followed) and the
operator asked for it with ``replace``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

import structlog

from chapiteau.broker.config import SocketSpec
from chapiteau.protocol.broker_messages import SocketInfo

log = structlog.get_logger("chapiteau.broker")

LISTENING_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)


class BindError(Exception):
    """A socket of the configuration could not be bound; the message says why and what to do."""


@dataclass(frozen=True)
class BoundSocket:
    """A socket the broker bound, with what it needs to describe and remove it."""

    spec: SocketSpec
    sock: socket.socket
    path_inode: int | None = None

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

    def owns_path(self) -> bool:
        """True while the unix socket's path is still the file this socket created."""
        if self.path_inode is None or self.spec.path is None:
            return False
        try:
            on_disk = os.lstat(self.spec.path)
        except OSError:
            return False
        return stat.S_ISSOCK(on_disk.st_mode) and on_disk.st_ino == self.path_inode

    def close(self) -> None:
        """Close the socket and remove its path if the path still is this socket's file.

        Once confined, the broker may no longer be allowed to remove it (a
        directory only root can write): the file stays, and the log says so.
        """
        if self.owns_path():
            assert self.spec.path is not None
            try:
                os.unlink(self.spec.path)
            except OSError as exc:
                log.warning("socket_file_not_removed", path=self.spec.path, error=exc.strerror)
        self.sock.close()


def bind(spec: SocketSpec, *, listen: bool = True, address: tuple | None = None) -> BoundSocket:
    """Create, configure and bind the socket ``spec`` describes; listen unless told not to.

    ``address`` overrides the configured one (used for the per-worker
    SO_REUSEPORT sockets, which bind to the address their master got).
    """
    try:
        sock = socket.socket(spec.family, spec.type, spec.proto)
    except OSError as exc:
        raise BindError(
            f"{spec.where}: cannot create a {spec.family_name} {spec.type_name} socket "
            f"(proto {spec.proto}): {exc.strerror}"
        ) from None
    path_inode = None
    try:
        _configure(sock, spec)
        if spec.family == socket.AF_UNIX:
            path_inode = _bind_unix(sock, spec)
        else:
            _bind_inet(sock, spec, address or resolve(spec))
        if listen and spec.type in LISTENING_TYPES:
            sock.listen(spec.backlog)
        sock.setblocking(spec.blocking)
    except OSError as exc:
        # What the steps above do not word themselves: setsockopt(), unlink(), listen().
        sock.close()
        raise BindError(f"{spec.where}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return BoundSocket(spec, sock, path_inode)


def bind_master(spec: SocketSpec) -> BoundSocket:
    """Bind the socket the broker keeps for ``spec``.

    An SO_REUSEPORT master is bound (so port 0 becomes a real port that every
    worker's own socket then shares) but never listens: a listening master
    that no worker accepts on would take its share of connections and let them
    hang.
    """
    return bind(spec, listen=not spec.so_reuseport)


def bind_reuseport_sibling(master: BoundSocket) -> BoundSocket:
    """Bind and listen one more SO_REUSEPORT socket on the master's address (one per worker)."""
    return bind(master.spec, address=master.sock.getsockname())


def resolve(spec: SocketSpec) -> tuple:
    """The first address of the socket's family that ``host`` resolves to."""
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, spec.family, spec.type)
    except socket.gaierror as exc:
        raise BindError(
            f"{spec.where}: cannot resolve host {spec.host!r}: {exc.strerror}"
        ) from None
    for family, _, _, _, address in infos:
        if family == spec.family:
            return address
    raise BindError(f"{spec.where}: host {spec.host!r} has no {spec.family_name} address")


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
                f"{spec.where}: cannot bind to interface {spec.interface!r}: {exc.strerror}"
            ) from None


def _bind_inet(sock: socket.socket, spec: SocketSpec, address: tuple) -> None:
    where = f"{spec.where}: cannot bind {_show(address)}"
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


def existing_socket_file(path: str, where: str) -> bool:
    """Whether a socket file is at ``path`` (False: nothing is there).

    Anything else there — a regular file, a directory, a symlink (lstat: never
    followed) — is a BindError: the broker is root and removes only sockets.
    """
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BindError(f"{where}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(existing.st_mode):
        raise BindError(f"{where}: the path exists and is not a socket; refusing to remove it")
    return True


def _bind_unix(sock: socket.socket, spec: SocketSpec) -> int:
    assert spec.path is not None
    where = f"{spec.where}: cannot bind {spec.path}"
    if existing_socket_file(spec.path, where):
        if not spec.replace:
            raise BindError(
                f"{where}: a socket file already exists; remove it or set replace = true"
            )
        os.unlink(spec.path)
    previous = os.umask(spec.umask)
    try:
        sock.bind(spec.path)
    except OSError as exc:
        raise BindError(f"{where}: {exc.strerror or exc}") from None
    finally:
        os.umask(previous)
    return os.lstat(spec.path).st_ino


def _show(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
