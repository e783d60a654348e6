"""The broker's table of bound sockets: open them all, apply a reloaded config, close them.

At start-up each socket comes from the first of: systemd (``LISTEN_FDS``,
broker/inherited.py), the orphaned workers of a previous broker on the same
config (broker/orphans.py, as root only), or a bind of its own.
Opening is all or nothing: at start-up a failure closes what was already
taken or bound (nothing half-started), and a reload binds every new or changed
socket before touching the old ones, so a reload that fails leaves the running
table as it was. Each ``so_reuseport`` master gets its steering program at
start-up (`steer`), before the broker is confined.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from chapiteau.broker.binding import LISTENING_TYPES, BindError, BoundSocket, bind_master
from chapiteau.broker.config import BrokerConfig, SocketSpec
from chapiteau.broker.event_log import log
from chapiteau.broker.inherited import ListenFd, activated_sockets
from chapiteau.broker.orphans import Orphan, find_orphans, instance_mark, recover_sockets
from chapiteau.broker.privileges import ServiceUser, running_as_root
from chapiteau.broker.steering import Steering
from chapiteau.protocol.broker_messages import Reloaded
from chapiteau.protocol.records import replace
from chapiteau.protocol.steering_maps import SteeringUnavailable

UNSTEERED = (
    "each connection goes to any worker's socket, and those waiting for a worker "
    "that stops are reset"
)


class ReloadError(Exception):
    """The new configuration could not be applied; the old one stays in force."""


def open_all(
    config: BrokerConfig,
    user: ServiceUser,
    passed: Collection[ListenFd],
    creators: Collection[int],
) -> tuple[dict[str, BoundSocket], list[Orphan]]:
    """Every socket of ``config`` (in its order), and the previous life's orphans found.

    ``passed``: the fds systemd passed; ``creators``: the uids of a socket a
    previous broker bound (root, the broker's account). Orphans are looked for
    only as root, only when a socket is still to be opened, and kept (to be
    retired) only when a socket was recovered from them: that their broker
    is dead is proved by nobody else holding that socket (a live one would).
    """
    sockets = activated_sockets(config.sockets, passed, config.path)
    orphans: list[Orphan] = []
    try:
        rest = [spec for name, spec in config.sockets.items() if name not in sockets]
        if rest and running_as_root():
            # Started as root, the supervisor could give its workers any uid.
            owner = None if user.uid == 0 else user.uid
            orphans = find_orphans(instance_mark(config.path), owner)
            recovered = recover_sockets(orphans, rest, creators)
            if not recovered:
                # Only a recovered socket proves their broker dead: a live one holds it.
                orphans = _forget(orphans)
            sockets |= recovered
        sockets |= bind_all((spec for spec in rest if spec.name not in sockets), user)
    except BaseException:
        close_all(sockets.values())
        for orphan in orphans:
            orphan.close()
        raise
    return {name: sockets[name] for name in config.sockets}, orphans


def _forget(orphans: list[Orphan]) -> list[Orphan]:
    """Leave ``orphans`` alone (log them); the empty list that replaces them."""
    if orphans:
        log.info("orphans_left_alone", pids=[o.pid for o in orphans], reason="no socket recovered")
    for orphan in orphans:
        orphan.close()
    return []


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


def steer(table: dict[str, BoundSocket]) -> None:
    """Give each ``so_reuseport`` master of ``table`` its steering program; never raises.

    At start-up only: the confined broker may not call bpf(2). A section the
    kernel refuses one (no CAP_BPF, Linux older than 5.14) is served without,
    after one warning.
    """
    for name, bound in list(table.items()):
        if not bound.spec.so_reuseport:
            continue
        try:
            table[name] = replace(bound, steering=Steering.create())
        except SteeringUnavailable as exc:
            log.warning(
                "steering_unavailable",
                name=name,
                error=exc.strerror,
                consequence=UNSTEERED,
                hint="the broker needs CAP_BPF (root) and Linux 5.14 or later",
            )
        else:
            log.info("socket_steered", name=name)


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

    A unix socket's ``owner`` and ``group`` are given at start only: the
    confined broker has no CAP_CHOWN and its seccomp filter kills chown. A
    reload that would need one (a new or rebound socket with an owner or group,
    or a changed owner or group) is refused before anything is bound.
    """
    added = [name for name in specs if name not in table]
    removed = [name for name in table if name not in specs]
    changed = [
        name for name in specs if name in table and not table[name].spec.same_binding(specs[name])
    ]
    rebind = [name for name in changed if not _adjustable(table[name].spec, specs[name])]
    in_place = [name for name in changed if name not in rebind]
    for name in added + rebind:
        _refuse_chown(None, specs[name])
    for name in in_place:
        _refuse_chown(table[name].spec, specs[name])
    try:
        fresh = bind_all((specs[name] for name in added + rebind), user)
    except BindError as exc:
        raise ReloadError(str(exc)) from None
    try:
        adjusted = {name: _adjust(table[name], specs[name]) for name in in_place}
    except ReloadError:
        close_all(fresh.values())
        raise
    except OSError as exc:
        close_all(fresh.values())
        raise ReloadError(f"cannot apply the new config: {exc}") from None
    close_all(table.pop(name) for name in removed + rebind)
    table.update(adjusted)
    table.update(fresh)
    log.info("sockets_reloaded", added=added, removed=removed, changed=changed)
    _warn_unsteered(fresh)
    return Reloaded(tuple(added), tuple(removed), tuple(changed))


def _warn_unsteered(fresh: dict[str, BoundSocket]) -> None:
    """Say which ``so_reuseport`` sockets a reload bound without steering."""
    for name in (name for name, bound in fresh.items() if bound.spec.so_reuseport):
        log.warning(
            "steering_unavailable",
            name=name,
            error="bound by a reload: the confined broker cannot load its program",
            consequence=UNSTEERED,
            hint="restart chapiteau to steer its connections",
        )


def _refuse_chown(old: SocketSpec | None, new: SocketSpec) -> None:
    """ReloadError when going from ``old`` (None: bound anew) to ``new`` needs a chown."""
    if (new.owner, new.group) == ((None, None) if old is None else (old.owner, old.group)):
        return
    raise ReloadError(
        f"{new.where}: owner and group of a unix socket are applied at start only "
        "(the confined broker cannot chown); restart chapiteau to apply them"
    )


def _adjustable(old: SocketSpec, new: SocketSpec) -> bool:
    # ``replace`` only matters when binding; a unix socket's mode becomes a chmod
    # (rebinding its path would have to remove the file the running workers serve).
    # Owner and group: a change is refused before (_refuse_chown), never a rebind.
    ignored = {"backlog": 0, "blocking": False, "replace": False, "umask": 0, "mode": None}
    ignored |= {"owner": None, "group": None, "where": ""}
    return {**old.as_dict(), **ignored} == {**new.as_dict(), **ignored}


def _adjust(bound: BoundSocket, spec: SocketSpec) -> BoundSocket:
    if (
        bound.spec.backlog != spec.backlog
        and spec.type in LISTENING_TYPES
        and not spec.so_reuseport
    ):
        bound.sock.listen(spec.backlog)
    bound.sock.setblocking(spec.blocking)
    if bound.spec.file_mode != spec.file_mode and bound.path is not None and bound.path.is_there():
        # Through the file's own inode: never a link put in its place.
        try:
            bound.path.change(mode=spec.file_mode)
        except OSError as exc:
            raise ReloadError(
                f"{spec.where}: cannot change the mode of {bound.path.path}: "
                f"{exc.strerror or exc}; restart chapiteau to apply it"
            ) from None
    return BoundSocket(spec, bound.sock, bound.path, bound.steering)
