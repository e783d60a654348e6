"""Listening sockets the broker did not bind, each checked against its [socket:NAME] section.

Two sources hand the broker a socket that is already bound: systemd (socket
activation, or its fd store after a restart: ``LISTEN_FDS``, this module) and
the orphaned workers of a previous broker on the same config
(broker/orphans.py). Either way a socket is used only when it is what its
section describes: family, type, protocol, bound address (the port too,
unless the section asks for port 0), interface, and listening when its type
listens. A socket that fits becomes a `BoundSocket` like one the broker
bound itself, with the section's backlog and blocking flag applied.

systemd's side of the protocol, as sd_listen_fds(3): the fds start at 3,
``LISTEN_PID`` must be this process (else they were meant for another one and
are left alone), ``LISTEN_FDNAMES`` names each (``FileDescriptorName=`` of a
socket unit, ``FDNAME=`` of the fd store). Each name must be a section's: an
fd with no name or with a name no section has is a start error, as is a
section the fd does not fit. The same socket passed twice under one name (a
socket unit's, and the fd store's copy of it) is taken once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, MutableMapping

from chapiteau.broker.binding import LISTENING_TYPES, BoundSocket, resolve
from chapiteau.broker.config import SocketSpec
from chapiteau.broker.event_log import log
from chapiteau.protocol.records import Record

LISTEN_FDS_START = 3
MAX_LISTEN_FDS = 1024
"""More fds than any config has sockets: a larger ``LISTEN_FDS`` is a broken caller."""


class InheritError(Exception):
    """A socket handed to the broker does not fit the config; the message says how to fix it."""


class ListenFd(Record):
    """One fd passed by systemd, with the name ``LISTEN_FDNAMES`` gives it ("" for none)."""

    __slots__ = ("fd", "name")

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name


def take_listen_fds(environ: MutableMapping[str, str] | None = None) -> list[ListenFd]:
    """The fds systemd passed to this process; the variables are removed from ``environ``.

    Empty when ``LISTEN_PID`` is not this process. The fds are made
    close-on-exec: they are the broker's, never a child's.
    """
    environ = os.environ if environ is None else environ
    count = environ.pop("LISTEN_FDS", "")
    pid = environ.pop("LISTEN_PID", "")
    names = environ.pop("LISTEN_FDNAMES", None)
    if not count or pid != str(os.getpid()):
        return []
    if not count.isdigit() or int(count) > MAX_LISTEN_FDS:
        raise InheritError(f"LISTEN_FDS={count!r} is not a number of fds up to {MAX_LISTEN_FDS}")
    words = names.split(":") if names is not None else []
    passed = []
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise InheritError(f"LISTEN_FDS={count}: fd {fd} is not open: {exc.strerror}") from None
        passed.append(ListenFd(fd, words[index].lower() if index < len(words) else ""))
    return passed


def activated_sockets(
    specs: Mapping[str, SocketSpec], passed: Iterable[ListenFd], config: str
) -> dict[str, BoundSocket]:
    """The sockets systemd passed, each checked against the section of its name.

    InheritError (after closing every passed fd) for an fd with no name, a
    name no section has, two different sockets under one name, or a socket
    that does not fit its section.
    """
    taken: dict[str, BoundSocket] = {}
    passed = list(passed)
    try:
        for listen_fd in passed:
            spec = specs.get(listen_fd.name)
            sock = _socket(listen_fd.fd)
            if spec is None:
                sock.close()
                raise InheritError(_unknown_name(listen_fd, config))
            if spec.name in taken:
                if os.fstat(sock.fileno()).st_ino != os.fstat(taken[spec.name].fd).st_ino:
                    sock.close()
                    raise InheritError(
                        f"{spec.where}: systemd passed two different sockets named "
                        f"{spec.name!r}; give each socket unit its own FileDescriptorName="
                    )
                sock.close()
                continue
            reason = mismatch(sock, spec)
            if reason is not None:
                sock.close()
                raise InheritError(
                    f"{spec.where}: the socket systemd passed as {spec.name!r} {reason}; "
                    "make the socket unit and the section describe the same socket"
                )
            taken[spec.name] = adopt(sock, spec)
    except BaseException:
        for bound in taken.values():
            bound.sock.close()
        for listen_fd in passed:
            _close_quietly(listen_fd.fd)
        raise
    for name, bound in taken.items():
        log.info("socket_activated", name=name, fd=bound.fd, inode=os.fstat(bound.fd).st_ino)
    return taken


def _unknown_name(listen_fd: ListenFd, config: str) -> str:
    if not listen_fd.name or listen_fd.name == "unknown":
        return (
            f"systemd passed fd {listen_fd.fd} with no name (LISTEN_FDNAMES): set "
            f"FileDescriptorName= in its socket unit to the NAME of a [socket:NAME] of {config}"
        )
    return (
        f"systemd passed a socket named {listen_fd.name!r} but {config} has no "
        f"[socket:{listen_fd.name}] section: add it, or remove the socket from the unit"
    )


def _socket(fd: int) -> socket.socket:
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        _close_quietly(fd)
        raise InheritError(
            f"systemd passed fd {fd}, which is not a socket: {exc.strerror}"
        ) from None


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        return


def mismatch(sock: socket.socket, spec: SocketSpec) -> str | None:
    """Why ``sock`` is not the socket ``spec`` describes ("is not listening"), or None.

    BindError when the section's host does not resolve.
    """
    try:
        family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        proto = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        reuseport = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        address = sock.getsockname()
    except OSError as exc:
        return f"cannot be examined: {exc.strerror}"
    if (family, kind) != (spec.family, spec.type):
        return (
            f"is {_family_name(family)} {_type_name(kind)}, not {spec.family_name} {spec.type_name}"
        )
    if spec.proto and proto != spec.proto:
        return f"has protocol {proto}, not {spec.proto}"
    if spec.so_reuseport or reuseport:
        return "uses SO_REUSEPORT: such a section's socket is bound by the broker itself"
    if spec.type in LISTENING_TYPES and not listening:
        return "is not listening"
    if spec.interface and _interface(sock) != spec.interface:
        return f"is not bound to interface {spec.interface}"
    wanted = _address(spec)
    if isinstance(wanted, str):
        return None if address == wanted else f"is bound to {address!r}, not {wanted}"
    host, port = address[:2]
    if host != wanted[0] or (spec.port and port != wanted[1]):
        return f"is bound to {_show(host, port)}, not {_show(*wanted[:2])}"
    return None


def _address(spec: SocketSpec) -> str | tuple:
    if spec.family == socket.AF_UNIX:
        assert spec.path is not None
        return spec.path
    return resolve(spec)


def _interface(sock: socket.socket) -> str:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 64)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _family_name(family: int) -> str:
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return f"family {family}"


def _type_name(kind: int) -> str:
    try:
        return socket.SocketKind(kind).name
    except ValueError:
        return f"type {kind}"


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def adopt(sock: socket.socket, spec: SocketSpec) -> BoundSocket:
    """``sock``, checked to fit ``spec``, as the broker's own: the section's backlog and blocking.

    Its file (a unix socket) stays where it is when the broker stops: its
    owner (systemd, or the broker that bound it) removes it.
    """
    if spec.type in LISTENING_TYPES:
        sock.listen(spec.backlog)
    sock.setblocking(spec.blocking)
    return BoundSocket(spec, sock)
