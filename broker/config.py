"""The broker's part of the configuration: the [broker] section and the [socket:*] sections.

The broker reads the config file itself (it is root-owned and root-read) and
nothing else: the supervisor can name a socket, never describe one. Every
value is checked here, so that a mistake stops chapiteau before anything is
bound, with a message naming the file, section and key.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import socket
from collections.abc import Callable, Mapping, Set

from chapiteau.protocol.broker_messages import MAX_NAME_BYTES, MAX_SOCKETS, NAME_PATTERN
from chapiteau.protocol.ini import (
    LOG_LEVELS,
    ConfigError,
    IniFile,
    Section,
    global_env,
)
from chapiteau.protocol.ini_files import read_ini_file
from chapiteau.protocol.records import Record, replace

# typing only for the type checker: the broker keeps every module it imports (typing: 0.6 MiB).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SOCKET_PREFIX = "socket:"
DEFAULT_UNIX_UMASK = 0o077
NO_ID = 0xFFFFFFFF
"""(uid_t) -1: chown's "leave unchanged", so the first number that is no id."""

FAMILIES = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6, "AF_UNIX": socket.AF_UNIX}
TYPES = {
    "SOCK_STREAM": socket.SOCK_STREAM,
    "SOCK_DGRAM": socket.SOCK_DGRAM,
    "SOCK_RAW": socket.SOCK_RAW,
    "SOCK_RDM": socket.SOCK_RDM,
    "SOCK_SEQPACKET": socket.SOCK_SEQPACKET,
}
SOCKET_KEYS = frozenset(
    {
        "host",
        "port",
        "family",
        "type",
        "proto",
        "backlog",
        "path",
        "umask",
        "owner",
        "group",
        "mode",
        "replace",
        "blocking",
        "interface",
        "so_reuseport",
    }
)
BROKER_KEYS = frozenset(
    {
        "user",
        "group",
        "broker_user",
        "supervisor_command",
        "supervisor_env",
        "socket_path",
        "orphan_timeout",
        "max_held_fds",
        "runtime_directory",
        "runtime_directory_mode",
    }
)
DEFAULT_RUNTIME_DIRECTORY_MODE = 0o750
DEFAULT_MAX_HELD_FDS = 20_100
"""Two output pipes for each of 10,000 workers, and the supervisor's state."""
VARIABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?\Z")


class SocketSpec(Record):
    """One [socket:NAME] section, validated; what the broker binds."""

    __slots__ = (
        "name",
        "family",
        "type",
        "proto",
        "host",
        "port",
        "path",
        "backlog",
        "umask",
        "replace",
        "blocking",
        "interface",
        "so_reuseport",
        "where",
        "owner",
        "group",
        "mode",
    )

    def __init__(
        self,
        name: str,
        family: int,
        type: int,
        proto: int,
        host: str,
        port: int,
        path: str | None,
        backlog: int,
        umask: int,
        replace: bool,
        blocking: bool,
        interface: str | None,
        so_reuseport: bool,
        where: str,
        owner: int | None = None,
        group: int | None = None,
        mode: int | None = None,
    ) -> None:
        self.name = name
        self.family = family
        self.type = type
        self.proto = proto
        self.host = host
        self.port = port
        self.path = path
        self.backlog = backlog
        self.umask = umask
        self.replace = replace
        self.blocking = blocking
        self.interface = interface
        self.so_reuseport = so_reuseport
        # ``file:section`` for messages about this socket.
        self.where = where
        # A unix socket file's owner (uid, resolved at load); None leaves the broker's.
        self.owner = owner
        # A unix socket file's group (gid, resolved at load); None leaves the broker's.
        self.group = group
        # A unix socket file's mode; None: what ``umask`` leaves of 0777.
        self.mode = mode

    @property
    def file_mode(self) -> int:
        """The mode a unix socket file gets: ``mode``, else 0777 less the umask."""
        return self.mode if self.mode is not None else 0o777 & ~self.umask

    @property
    def owned(self) -> bool:
        """True when the socket file must be given to another owner or group (a chown)."""
        return self.owner is not None or self.group is not None

    @property
    def family_name(self) -> str:
        return socket.AddressFamily(self.family).name

    @property
    def type_name(self) -> str:
        return socket.SocketKind(self.type).name

    def same_binding(self, other: SocketSpec) -> bool:
        """True when rebinding is not needed to go from ``self`` to ``other``."""
        return {**self.as_dict(), "where": ""} == {**other.as_dict(), "where": ""}


class BrokerConfig(Record):
    """Everything the broker needs from the config file."""

    __slots__ = (
        "path",
        "user",
        "group",
        "supervisor_command",
        "socket_path",
        "orphan_timeout",
        "sockets",
        "files",
        "max_held_fds",
        "loglevel",
        "logoutput",
        "pidfile",
        "loggerconfig",
        "runtime_directory",
        "runtime_directory_mode",
        "supervisor_env",
        "broker_user",
    )

    def __init__(
        self,
        path: str,
        user: str | None,
        group: str | None,
        supervisor_command: tuple[str, ...] | None,
        socket_path: str | None,
        orphan_timeout: float,
        sockets: dict[str, SocketSpec],
        files: tuple[str, ...],
        max_held_fds: int = DEFAULT_MAX_HELD_FDS,
        loglevel: str | None = None,
        logoutput: str | None = None,
        pidfile: str | None = None,
        loggerconfig: str | None = None,
        runtime_directory: str | None = None,
        runtime_directory_mode: int = DEFAULT_RUNTIME_DIRECTORY_MODE,
        supervisor_env: tuple[str, ...] = (),
        broker_user: str | None = None,
    ) -> None:
        self.path = path
        self.user = user
        self.group = group
        self.supervisor_command = supervisor_command
        self.socket_path = socket_path
        self.orphan_timeout = orphan_timeout
        self.sockets = sockets
        self.files = files
        # Fds the broker keeps for the supervisor's next generation (pipes, memfds), at most.
        self.max_held_fds = max_held_fds
        # ``[circus] loglevel``, used when the command line gives none (as circusd).
        self.loglevel = loglevel
        # ``[circus] logoutput``: a file, or None for stderr.
        self.logoutput = logoutput
        # ``[circus] pidfile``, used when the command line gives none.
        self.pidfile = pidfile
        # ``[circus] loggerconfig``: not applied (chapiteau writes its own log lines); warned about.
        self.loggerconfig = loggerconfig
        # ``[broker] runtime_directory``: made by the broker for the service user (ipc endpoints).
        self.runtime_directory = runtime_directory
        self.runtime_directory_mode = runtime_directory_mode
        # ``[broker] supervisor_env``: more variables (NAME or PREFIX*) the supervisor inherits.
        self.supervisor_env = supervisor_env
        # ``[broker] broker_user``: the broker's own uid once bound (None: the default account).
        self.broker_user = broker_user


def load_broker_config(path: str, environ: Mapping[str, str] | None = None) -> BrokerConfig:
    """Read and validate the broker's sections of ``path``; ConfigError on any mistake."""
    ini = read_ini_file(path)
    env = global_env(ini, os.environ if environ is None else environ)
    sockets: dict[str, SocketSpec] = {}
    socket_sections = ini.sections_with_prefix(SOCKET_PREFIX)
    if len(socket_sections) > MAX_SOCKETS:
        # One socket_list reply describes them all, and a supervisor refuses a longer one.
        raise socket_sections[MAX_SOCKETS].error(
            None, f"too many [socket:*] sections: {len(socket_sections)}, at most {MAX_SOCKETS}"
        )
    for section in socket_sections:
        spec = parse_socket(section.expanded(env), ini.defaults.keys())
        if spec.name in sockets:
            raise section.error(
                None, f"socket name {spec.name!r} is defined twice (names ignore case)"
            )
        sockets[spec.name] = spec
    broker = ini.sections.get("broker")
    if broker is None:
        broker = Section("broker", {}, {}, ini.path)
    config = _broker_config(ini, broker.expanded(env), sockets)
    circus = ini.sections.get("circus")
    return _with_circus_logging(config, circus.expanded(env)) if circus else config


def _with_circus_logging(config: BrokerConfig, circus: Section) -> BrokerConfig:
    """circusd's own [circus] keys for logging and the pidfile."""
    level = (circus.get_str("loglevel") or "").strip().lower() or None
    if level is not None and level not in LOG_LEVELS:
        raise circus.error("loglevel", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    output = (circus.get_str("logoutput") or "").strip()
    if output.startswith("syslog:"):
        raise circus.error(
            "logoutput",
            "syslog output is not supported; log to a file, or to stderr (journald under systemd)",
        )
    return replace(
        config,
        loglevel=level,
        logoutput=None if output in ("", "-", "stdout") else output,
        pidfile=(circus.get_str("pidfile") or "").strip() or None,
        loggerconfig=(circus.get_str("loggerconfig") or "").strip() or None,
    )


def _broker_config(ini: IniFile, section: Section, sockets: dict[str, SocketSpec]) -> BrokerConfig:
    _reject_unknown(section, BROKER_KEYS, ini.defaults.keys())
    command = section.get_str("supervisor_command")
    argv: tuple[str, ...] | None = None
    if command is not None:
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise section.error("supervisor_command", f"cannot split the command: {exc}") from None
        if not argv:
            raise section.error("supervisor_command", "is empty")
    socket_path = section.get_str("socket_path")
    if socket_path is not None and not os.path.isabs(socket_path):
        raise section.error("socket_path", f"{socket_path!r} must be an absolute path")
    orphan_timeout = section.get_float("orphan_timeout", 30.0)
    if orphan_timeout is None or orphan_timeout < 0:
        raise section.error("orphan_timeout", "must be a number of seconds >= 0")
    max_held_fds = section.get_int("max_held_fds", DEFAULT_MAX_HELD_FDS)
    if max_held_fds is None or not 0 <= max_held_fds <= 1_000_000:
        raise section.error("max_held_fds", "must be a whole number from 0 to 1000000")
    runtime_directory = section.get_str("runtime_directory") or None
    if runtime_directory is not None and (
        not os.path.isabs(runtime_directory) or not runtime_directory.strip("/")
    ):
        raise section.error(
            "runtime_directory", f"{runtime_directory!r} must be an absolute path below /"
        )
    runtime_mode = section.get_octal("runtime_directory_mode", DEFAULT_RUNTIME_DIRECTORY_MODE)
    if runtime_mode is None or runtime_mode > 0o777:
        raise section.error("runtime_directory_mode", "must be an octal mode between 000 and 777")
    return BrokerConfig(
        path=ini.path,
        user=section.get_str("user") or None,
        group=section.get_str("group") or None,
        broker_user=section.get_str("broker_user") or None,
        supervisor_command=argv,
        socket_path=socket_path,
        orphan_timeout=orphan_timeout,
        max_held_fds=max_held_fds,
        sockets=sockets,
        runtime_directory=runtime_directory,
        runtime_directory_mode=runtime_mode,
        files=tuple(ini.files),
        supervisor_env=_variable_names(section),
    )


def _variable_names(section: Section) -> tuple[str, ...]:
    """``[broker] supervisor_env``: environment variable names, or prefixes ending in ``*``."""
    names = tuple((section.get_str("supervisor_env") or "").split())
    for name in names:
        if not VARIABLE_PATTERN.match(name):
            raise section.error(
                "supervisor_env",
                f"{name!r} is not a variable name: write NAME or PREFIX* separated by spaces",
            )
    return names


def parse_socket(section: Section, defaults: Set[str] = frozenset()) -> SocketSpec:
    """Validate one [socket:NAME] section (values already expanded).

    An unknown key is an error (a misspelt ``so_reuseport`` must not pass
    silently), except the ``defaults`` that [DEFAULT] puts in every section.
    """
    name = section.name[len(SOCKET_PREFIX) :].lower()
    _reject_unknown(section, SOCKET_KEYS, defaults)
    if not 0 < len(name) <= MAX_NAME_BYTES or not NAME_PATTERN.match(name):
        raise section.error(
            None,
            f"socket name {name!r} must be 1 to {MAX_NAME_BYTES} letters, digits, '_', '.' or '-'",
        )
    path = section.get_str("path") or None
    family = _family(section, path)
    so_reuseport = section.get_bool("so_reuseport", False)
    if so_reuseport and family == socket.AF_UNIX:
        raise section.error("so_reuseport", "only works with AF_INET and AF_INET6 sockets")
    if path and not os.path.isabs(path):
        path = os.path.join(os.path.dirname(section.file) or ".", path)
    return SocketSpec(
        name=name,
        family=family,
        type=_lookup(section, "type", section.get_str("type", "SOCK_STREAM") or "", TYPES),
        proto=_protocol(section),
        host=section.get_str("host", "localhost") or "localhost",
        port=_bounded(section, "port", 8080, 65535, "is not a port number (0 to 65535)"),
        path=path,
        backlog=_bounded(section, "backlog", 2048, None, "must be >= 0"),
        replace=section.get_bool("replace", False),
        blocking=section.get_bool("blocking", False),
        interface=section.get_str("interface") or None,
        so_reuseport=so_reuseport,
        where=f"{section.file}:{section.name}",
        **_socket_file(section, family),
    )


def _family(section: Section, path: str | None) -> int:
    """``family``: AF_UNIX whenever ``path`` is set, which AF_UNIX needs."""
    word = "AF_UNIX" if path else section.get_str("family", "AF_INET") or ""
    family = _lookup(section, "family", word, FAMILIES)
    if family == socket.AF_UNIX and not path:
        raise section.error("path", "a unix socket needs a path")
    return family


def _bounded(section: Section, key: str, default: int, top: int | None, hint: str) -> int:
    """An integer option from 0 to ``top`` (None: no upper bound)."""
    value = section.get_int(key, default)
    if value is None or value < 0 or (top is not None and value > top):
        raise section.error(key, f"{value} {hint}")
    return value


def _socket_file(section: Section, family: int) -> dict[str, int | None]:
    """A unix socket file's ``umask``, ``owner``, ``group`` and ``mode``, checked.

    ``mode`` and ``umask`` both say what the mode is: giving both is an error
    rather than a silent choice. Owner and group are looked up here, so that a
    misspelt name stops the start (and ``--check-config``) before anything is bound.
    """
    umask = section.get_octal("umask", DEFAULT_UNIX_UMASK)
    if umask is None or umask > 0o777:
        raise section.error("umask", "must be an octal mode between 000 and 777")
    mode = section.get_octal("mode", None)
    if mode is not None and mode > 0o777:
        raise section.error("mode", "must be an octal mode between 000 and 777, e.g. 0660")
    if mode is not None and "umask" in section.options:
        raise section.error("mode", "give mode or umask, not both: mode sets the whole mode")
    file_options = {
        "owner": _account(section, "owner", pwd.getpwnam, "pw_uid", "useradd"),
        "group": _account(section, "group", grp.getgrnam, "gr_gid", "groupadd"),
        "mode": mode,
    }
    if family != socket.AF_UNIX:
        for key, value in file_options.items():
            if value is not None:
                raise section.error(key, "only applies to a unix socket (set path)")
    return {"umask": umask, **file_options}


def _account(
    section: Section, key: str, lookup: Callable[[str], Any], field: str, create: str
) -> int | None:
    """``owner`` or ``group``: a name, or a number taken as it is (as chown does)."""
    word = (section.get_str(key) or "").strip()
    if not word:
        return None
    if word.isdigit():
        if int(word) >= NO_ID:
            raise section.error(key, f"{word} is not an id (0 to {NO_ID - 1})")
        return int(word)
    try:
        return getattr(lookup(word), field)
    except KeyError:
        raise section.error(
            key, f"{word!r} does not exist; create it ({create}) or give a number"
        ) from None


def _protocol(section: Section) -> int:
    word = section.get_str("proto")
    if not word:
        return 0
    if word.isdigit():
        return int(word)
    try:
        return socket.getprotobyname(word)
    except OSError:
        raise section.error("proto", f"unknown protocol {word!r} (see /etc/protocols)") from None


def _lookup(section: Section, key: str, word: str, table: dict[str, int]) -> int:
    value = table.get(word.strip().upper())
    if value is None:
        raise section.error(key, f"{word!r} is not one of {', '.join(table)}")
    return value


def _reject_unknown(section: Section, keys: Set[str], defaults: Set[str]) -> None:
    """ConfigError for an option that is neither one of ``keys`` nor a [DEFAULT] one."""
    for key in section.options:
        if key not in keys and key not in defaults:
            raise ConfigError(
                f"unknown option; the [{section.name}] section accepts {', '.join(sorted(keys))}",
                file=section.file_of(key),
                section=section.name,
                key=key,
            )
