"""Confine the broker once its sockets are bound: its own uid, Landlock, seccomp.

The layers, in the order they are put on (each one needs the previous):

1. ``drop_privileges``: the broker's own account (no file is its own), only
   CAP_KILL and CAP_NET_BIND_SERVICE (and CAP_NET_RAW when a socket needs it)
   in every set including the bounding set, no_new_privs, not dumpable;
2. seccomp: the system calls the broker's loop makes, no others (loaded
   before Landlock: libseccomp lives outside what Landlock leaves readable;
   the Landlock calls are allowed, they can only restrict further);
3. Landlock: read the config's directories, the Python installation, the
   few /etc files name lookups read and /proc; create and remove sockets in
   the unix sockets' directories; remove the pidfile; write and create files
   in the directory of ``--log-output`` (USR1 reopens it); nothing else.

What each stops and what remains is in docs/security.md. The launcher
(broker/launcher.py) must be forked before: everything here is inherited.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import site
import socket
import sys

import prctl

import chapiteau.broker
import chapiteau.protocol
from chapiteau.broker import landlock, seccomp
from chapiteau.broker.config import BrokerConfig
from chapiteau.broker.event_log import log
from chapiteau.broker.privileges import (
    CREATE_BROKER_USER,
    DEFAULT_BROKER_USER,
    ServiceUser,
    drop_privileges,
    needed_capabilities,
    running_as_root,
)
from chapiteau.protocol.records import Record

LOOKUP_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
)
"""What glibc reads to resolve a host, a protocol or a user (a reload, a supervisor start)."""
SOCKET_DIRECTORY = landlock.READ_DIR | landlock.MAKE_SOCK | landlock.REMOVE_FILE
LOG_DIRECTORY = landlock.WRITE_FILE | landlock.MAKE_REG
"""Reopen the log file by name after a rotation, or create it when the rotation left none."""


class Confinement(Record):
    """What ``confine`` achieved, for the log line an operator checks."""

    __slots__ = ("uid", "capabilities", "landlock_abi", "seccomp_rules")

    def __init__(
        self,
        uid: int,
        capabilities: tuple[str, ...],
        landlock_abi: int,
        seccomp_rules: int,
    ) -> None:
        self.uid = uid
        self.capabilities = capabilities
        self.landlock_abi = landlock_abi
        self.seccomp_rules = seccomp_rules


def filesystem_rules(
    config: BrokerConfig, pidfile: str | None, log_directory: str | None = None
) -> list[landlock.Rule]:
    """Every path the broker may still use after binding, and how."""
    rules = [landlock.Rule(os.path.dirname(path), landlock.READ) for path in config.files]
    rules += [landlock.Rule(path, landlock.READ) for path in sorted(python_libraries())]
    rules += [landlock.Rule(path, landlock.READ_FILE) for path in LOOKUP_FILES]
    rules.append(landlock.Rule("/proc", landlock.READ))
    unix_paths = [spec.path for spec in config.sockets.values() if spec.path]
    if config.socket_path:
        unix_paths.append(config.socket_path)
    for directory in sorted({os.path.dirname(path) for path in unix_paths}):
        rules.append(landlock.Rule(directory, SOCKET_DIRECTORY))
    if pidfile:
        absolute = os.path.abspath(pidfile)
        rules.append(landlock.Rule(absolute, landlock.READ_FILE))
        rules.append(landlock.Rule(os.path.dirname(absolute), landlock.REMOVE_FILE))
    if log_directory:
        rules.append(landlock.Rule(log_directory, LOG_DIRECTORY))
    return rules


def python_libraries() -> set[str]:
    """Where this interpreter imports from: its standard library, the site's packages.

    Read from the interpreter itself, not from sysconfig, whose tables the
    broker would keep in memory for good (a third of a MiB).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    libraries = {
        os.path.dirname(os.__file__),
        # The standard library's extension modules (lib-dynload), as sysconfig's platstdlib.
        os.path.join(sys.base_exec_prefix, sys.platlibdir, version),
        # Debian's site also names dist-packages directories that rarely exist.
        *(path for path in site.getsitepackages() if os.path.isdir(path)),
    }
    # An editable install maps the packages from the checkout.
    for package in (chapiteau.broker, chapiteau.protocol):
        libraries.update(package.__path__)
    return libraries


def confine(
    config: BrokerConfig,
    pidfile: str | None,
    log_directory: str | None,
    broker: ServiceUser | None,
    service: ServiceUser,
) -> Confinement:
    """Put every layer on, in order; log (once) each layer the system lacks."""
    _load_lookup_modules(service)
    capabilities: tuple[str, ...] = ()
    if running_as_root():
        capabilities = needed_capabilities(config)
        if broker is None and config.broker_user is None:
            log.warning(
                "broker_user_missing",
                user=DEFAULT_BROKER_USER,
                hint=f"the broker keeps uid 0 (with {', '.join(capabilities)} only); "
                f"create its account: {CREATE_BROKER_USER}",
            )
        drop_privileges(capabilities, broker)
    else:
        prctl.set_no_new_privs(1)
    try:
        rules = seccomp.install()
    except seccomp.SeccompUnavailable as exc:
        log.warning("seccomp_unavailable", error=str(exc))
        rules = 0
    restricted = landlock.restrict(filesystem_rules(config, pidfile, log_directory))
    if restricted is None:
        log.warning("landlock_unavailable", hint="Linux 5.13 or later with Landlock enabled")
    else:
        if restricted.missing:
            log.info("landlock_paths_missing", paths=list(restricted.missing))
        if restricted.unreachable:
            log.warning(
                "paths_unreachable",
                paths=list(restricted.unreachable),
                hint="the broker's account cannot reach these: a reload that needs them fails; "
                "make them readable by the service group",
            )
    return Confinement(os.getuid(), capabilities, restricted.abi if restricted else 0, rules)


def _load_lookup_modules(service: ServiceUser) -> None:
    """Resolve a host and a user once, so that glibc loads its NSS modules while it still can."""
    socket.getaddrinfo(b"localhost", None)
    with contextlib.suppress(KeyError):
        pwd.getpwuid(service.uid)
