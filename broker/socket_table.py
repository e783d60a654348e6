"""The broker's table of bound sockets: bind them all, apply a reloaded config, close them.

Binding is all or nothing: at start-up a failure closes what was already bound
(nothing half-started), and a reload binds every new or changed socket before
touching the old ones, so a reload that fails leaves the running table as it
was.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from chapiteau.broker.binding import LISTENING_TYPES, BindError, BoundSocket, bind_master
from chapiteau.broker.config import SocketSpec
from chapiteau.broker.privileges import ServiceUser
from chapiteau.protocol.broker_messages import Reloaded

log = structlog.get_logger("chapiteau.broker")


class ReloadError(Exception):
    """The new configuration could not be applied; the old one stays in force."""


def bind_all(specs: Iterable[SocketSpec], user: ServiceUser) -> dict[str, BoundSocket]:
    """Bind every socket, or none: BindError after closing the ones already bound.

    ``user`` is the service user, whom no unix socket path may let redirect the broker.
    """
    bound: dict[str, BoundSocket] = {}
    try:
        for spec in specs:
            bound[spec.name] = bind_master(spec, user)
    except BaseException:
        close_all(bound.values())
        raise
    for entry in bound.values():
        info = entry.info()
        log.info("socket_bound", name=info.name, host=info.host, port=info.port, path=info.path)
    return bound


def close_all(sockets: Iterable[BoundSocket]) -> None:
    """Close every socket (and remove its file); never raises, failures are logged."""
    for bound in sockets:
        bound.close()


def apply_reload(
    table: dict[str, BoundSocket], specs: dict[str, SocketSpec], user: ServiceUser
) -> Reloaded:
    """Change ``table`` in place to match ``specs``; ReloadError leaves it untouched.

    A socket whose only changes are its backlog, blocking flag or unix mode is
    adjusted in place: rebinding the same address would fail while workers hold
    it. (Should adjusting one fail, those adjusted before it keep their new
    settings; the table itself is left as it was.)
    """
    added = [name for name in specs if name not in table]
    removed = [name for name in table if name not in specs]
    changed = [
        name for name in specs if name in table and not table[name].spec.same_binding(specs[name])
    ]
    rebind = [name for name in changed if not _adjustable(table[name].spec, specs[name])]
    try:
        fresh = bind_all((specs[name] for name in added + rebind), user)
    except BindError as exc:
        raise ReloadError(str(exc)) from None
    try:
        adjusted = {
            name: _adjust(table[name], specs[name]) for name in changed if name not in rebind
        }
    except OSError as exc:
        close_all(fresh.values())
        raise ReloadError(f"cannot apply the new config: {exc}") from None
    close_all(table.pop(name) for name in removed + rebind)
    table.update(adjusted)
    table.update(fresh)
    log.info("sockets_reloaded", added=added, removed=removed, changed=changed)
    return Reloaded(tuple(added), tuple(removed), tuple(changed))


def _adjustable(old: SocketSpec, new: SocketSpec) -> bool:
    # ``replace`` only matters when binding; a unix socket's umask becomes a chmod
    # (rebinding its path would have to remove the file the running workers serve).
    ignored = {"backlog": 0, "blocking": False, "replace": False, "umask": 0, "where": ""}
    return {**vars(old), **ignored} == {**vars(new), **ignored}


def _adjust(bound: BoundSocket, spec: SocketSpec) -> BoundSocket:
    if (
        bound.spec.backlog != spec.backlog
        and spec.type in LISTENING_TYPES
        and not spec.so_reuseport
    ):
        bound.sock.listen(spec.backlog)
    bound.sock.setblocking(spec.blocking)
    if bound.spec.umask != spec.umask and bound.path is not None and bound.path.is_there():
        # Through the file's own inode: never a link put in its place.
        bound.path.change(mode=0o777 & ~spec.umask)
    return BoundSocket(spec, bound.sock, bound.path)
