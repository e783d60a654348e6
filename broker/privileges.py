"""Who the supervisor runs as, whether that user can run it, and the broker's own privilege drop.

Three narrow jobs around the privilege line:

* resolve the service user of ``[broker] user``/``group`` (default ``nobody``
  when started as root, else whoever started chapiteau);
* before anything is spawned, check that this user can reach and read every
  file the supervisor needs (the interpreter, the installed packages, the
  config), walking each path's directories, so that an interpreter under a
  0700 home directory is reported as exactly that instead of a cryptic crash;
* once the sockets are bound, switch the broker to its own account
  (``[broker] broker_user``, default ``chapiteau-broker``), which owns no
  file, keeping only the capabilities that re-binding and signalling the
  supervisor's processes still need, in every set including the bounding
  set, and set no_new_privs. Starting the supervisor is the launcher's job
  (broker/launcher.py), so the broker keeps neither CAP_SETUID nor CAP_SETGID.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import socket
import stat
import sys
from collections.abc import Iterable

import prctl

from chapiteau.broker.config import BrokerConfig
from chapiteau.protocol.records import Record

SUPERVISOR_MODULES = ("chapiteau.supervisor", "chapiteau.protocol", "zmq", "structlog", "psutil")
BASE_CAPABILITIES = ("kill", "net_bind_service")
"""Signal the supervisor and orphaned workers (another uid); bind ports below 1024 on reload."""
DEFAULT_BROKER_USER = "chapiteau-broker"
CREATE_BROKER_USER = (
    f"useradd --system --no-create-home --shell /usr/sbin/nologin {DEFAULT_BROKER_USER}"
)


class PrivilegeError(Exception):
    """The service user cannot be used as configured; the message says why and how to fix it."""


class ServiceUser(Record):
    """The unprivileged identity of the supervisor and, by default, of every worker."""

    __slots__ = ("name", "uid", "gid", "groups")

    def __init__(self, name: str, uid: int, gid: int, groups: tuple[int, ...]) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups


def running_as_root() -> bool:
    return os.geteuid() == 0


def resolve_service_user(user: str | None, group: str | None) -> ServiceUser:
    """Look up the configured user and group (names or numbers)."""
    if user is None:
        entry = pwd.getpwnam("nobody") if running_as_root() else pwd.getpwuid(os.getuid())
    else:
        entry = _lookup_user(user)
    if not running_as_root() and entry.pw_uid != os.getuid():
        raise PrivilegeError(
            f"[broker] user = {user}: switching to another user needs root; start chapiteau "
            f"as root or remove the user option"
        )
    gid = entry.pw_gid if group is None else _lookup_group(group)
    if not running_as_root():
        if gid != os.getgid() and gid not in os.getgroups():
            raise PrivilegeError(f"[broker] group = {group}: switching group needs root")
        return ServiceUser(entry.pw_name, entry.pw_uid, gid, tuple(os.getgroups()))
    return ServiceUser(entry.pw_name, entry.pw_uid, gid, tuple(os.getgrouplist(entry.pw_name, gid)))


def _lookup_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"[broker] user = {user}: no such user; create it (useradd --system {user}) "
            f"or name an existing one"
        ) from None


def _lookup_group(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivilegeError(f"[broker] group = {group}: no such group") from None


def on_path(program: str) -> str:
    """Where ``$PATH`` finds ``program`` (``program`` itself if it names a path or is not found).

    shutil.which's rule, written out: shutil would bring compression modules into the broker.
    """
    if "/" in program:
        return program
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return program


def supervisor_files(config: BrokerConfig) -> list[tuple[str, int]]:
    """The files the supervisor must be able to use, each with the access it needs.

    The program is this interpreter (with the installed packages it imports),
    or the first word of ``[broker] supervisor_command``.
    """
    command = config.supervisor_command
    argv0 = sys.executable if command is None else on_path(command[0])
    needs: list[tuple[str, int]] = [(argv0, os.X_OK), (os.path.realpath(argv0), os.R_OK | os.X_OK)]
    if argv0 == sys.executable:
        for module in SUPERVISOR_MODULES:
            spec = importlib.util.find_spec(module)
            for location in (spec.submodule_search_locations or []) if spec else []:
                needs.append((location, os.R_OK | os.X_OK))
    needs.extend((path, os.R_OK) for path in config.files)
    return needs


def check_access(user: ServiceUser, needs: Iterable[tuple[str, int]]) -> None:
    """Raise PrivilegeError naming the first path the user cannot reach or use."""
    if user.uid == 0:
        return
    for path, mode in needs:
        absolute = os.path.abspath(path)
        parts = absolute.split(os.sep)
        for depth in range(1, len(parts)):
            directory = os.sep.join(parts[:depth]) or os.sep
            _require(user, directory, os.X_OK, f"cannot reach {absolute}")
        _require(user, absolute, mode, f"cannot use {absolute}")


def _require(user: ServiceUser, path: str, mode: int, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PrivilegeError(f"service user {user.name!r} {what}: {path}: {exc.strerror}") from None
    if user.uid == st.st_uid:
        shift = 6
    elif st.st_gid in user.groups or st.st_gid == user.gid:
        shift = 3
    else:
        shift = 0
    allowed = (st.st_mode >> shift) & 0o7
    wanted = (4 if mode & os.R_OK else 0) | (1 if mode & os.X_OK else 0)
    if allowed & wanted != wanted:
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        raise PrivilegeError(
            f"service user {user.name!r} {what}: {kind} {path} is mode "
            f"{stat.S_IMODE(st.st_mode):04o} owned by {_owner(st)}; install chapiteau and its "
            f"interpreter where that user can read them (a virtualenv outside private home "
            f"directories, e.g. /opt/chapiteau), or make {path} readable"
        )


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def needed_capabilities(config: BrokerConfig) -> tuple[str, ...]:
    """The capabilities the broker keeps after binding: restart the supervisor, rebind, signal."""
    extra = ()
    if any(s.type == socket.SOCK_RAW or s.interface for s in config.sockets.values()):
        extra = ("net_raw",)
    return BASE_CAPABILITIES + extra


def resolve_broker_user(name: str | None, service: ServiceUser) -> ServiceUser | None:
    """The account the broker switches to once bound; None: it keeps its uid.

    Without ``[broker] broker_user`` that is ``chapiteau-broker`` when the
    account exists. Its supplementary group is the service user's group, so
    that a config the supervisor can read, the broker can read again on reload.
    Only root switches; ``root`` or uid 0 means: keep uid 0.
    """
    if not running_as_root():
        return None
    where = f"[broker] broker_user = {name}"
    wanted = name or DEFAULT_BROKER_USER
    try:
        entry = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except KeyError:
        if name is None:
            return None
        raise PrivilegeError(
            f"{where}: no such user; create it (useradd --system --no-create-home "
            f"--shell /usr/sbin/nologin {name}) or remove the option"
        ) from None
    if entry.pw_uid == 0:
        return None
    if entry.pw_uid == service.uid:
        raise PrivilegeError(
            f"{where}: the broker needs its own account, not the service user's "
            f"({service.name}), which could signal it; run: {CREATE_BROKER_USER}"
        )
    groups = tuple(dict.fromkeys((entry.pw_gid, service.gid)))
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def drop_privileges(capabilities: tuple[str, ...], broker: ServiceUser | None = None) -> None:
    """Switch to ``broker`` (if any) keeping only ``capabilities``, in every set; no_new_privs.

    The order matters: the bounding set needs CAP_SETPCAP, which it drops;
    the uid switch keeps the permitted set (keep-caps) and empties the
    effective one, so the permitted set shrinks first and the kept
    capabilities are then raised again.
    """
    keep = [getattr(prctl, f"CAP_{name.upper()}") for name in capabilities]
    prctl.capbset.limit(*keep)
    if broker is not None:
        prctl.set_keepcaps(True)
        os.setgroups(list(broker.groups))
        os.setresgid(broker.gid, broker.gid, broker.gid)
        os.setresuid(broker.uid, broker.uid, broker.uid)
        prctl.set_keepcaps(False)
    prctl.cap_effective.limit(*keep)
    prctl.cap_permitted.limit(*keep)
    prctl.cap_inheritable.limit()
    for name in capabilities:
        setattr(prctl.cap_effective, name, True)
    # Not ptrace-able nor readable through /proc by processes of the broker's own uid.
    prctl.set_dumpable(False)
    prctl.set_no_new_privs(1)
