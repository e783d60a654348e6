"""Build the supervisor's model of a Circus configuration file.

`load_config` reads the file with `chapiteau.protocol.ini`, expands
``$(circus.env.X)`` as Circus does (the global environment, then the watcher's), computes
each watcher's environment ([env] sections) and checks every value. The first mistake is
raised as a ConfigError naming ``file:section:key``; a watcher is never
silently dropped, unlike Circus.

Where Circus has a defect, this module does the right thing instead:

* no ``__name__`` option or environment variable (Circus passes ``__name__`` to children);
* ``$VAR`` is expanded only in values written in [env] / [env:...] sections,
  never in values inherited through ``copy_env`` (Circus issue #1189);
* a child whose environment has no PATH gets ``PATH=/usr/local/bin:/usr/bin:/bin``
  instead of an empty environment, added at spawn (`worker_env`) so that
  ``options`` shows the environment as Circus computes it;
* ``uid``/``gid`` 0 or ``root`` mean root, not "unset": they are
  resolved to numbers here and ``None`` is the only "unset";
* the multicast responder is off unless ``multicast_endpoint`` is set;
* ``[socket:NAME] umask`` is not interpreted here: the broker binds sockets.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import grp
import importlib.util
import os
import pwd
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chapiteau.protocol.constants import (
    BROKER_FD_VARIABLE,
    DEFAULT_ENDPOINT,
    DEFAULT_PUBSUB_ENDPOINT,
    DEFAULT_STATS_ENDPOINT,
    SUPERVISOR_START_VARIABLE,
    SYSTEMD_VARIABLES,
)
from chapiteau.protocol.ini import (
    LOG_LEVELS,
    ConfigError,
    IniFile,
    Section,
    expand_env,
    global_env,
)
from chapiteau.protocol.ini_files import read_ini_file
from chapiteau.protocol.options import (
    FAMILIES,
    WATCHER_OPTIONS,
    OptionError,
    UnknownOption,
    check_watcher,
    watcher_option,
)
from chapiteau.supervisor.io.streams import STREAM_CLASSES

# Given to a child whose configured environment has no PATH: what a login
# shell would give, so that bare command names resolve the same way in the
# spawner and in the child (Circus gives an empty environment).
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

FLAPPING_PLUGIN = "circus.plugins.flapping.Flapping"
"""Built into the supervisor's crash-loop backoff: no plugin process runs for it."""
CRASH_WINDOW = 1.0
"""A process that dies this soon after its spawn crashed (Circus flapping's default window)."""

__all__ = [
    "CircusOptions",
    "Config",
    "ConfigError",
    "Flapping",
    "PluginConfig",
    "SocketConfig",
    "WatcherConfig",
    "load_config",
]

PROCESS_OWN_VARIABLES = SYSTEMD_VARIABLES | {BROKER_FD_VARIABLE, SUPERVISOR_START_VARIABLE}
"""Messages to the one process they were given to (systemd's, the broker's to the
supervisor): ``copy_env`` never copies them, or a worker would notify systemd or look
for fds it does not have. The systemd socket protocol sets a worker's own LISTEN_*."""

CURVE_SECRET_KEY = "endpoint_curve_secretkey"
CURVE_CLIENTS = "endpoint_curve_clients"


SOCKET_REFERENCE = re.compile(
    r"\$\(circus\.sockets\.(?P<dollar>[\w.\-]+)\)|\(\(circus\.sockets\.(?P<parens>[\w.\-]+)\)\)",
    re.IGNORECASE,
)


def socket_references(text: str) -> list[str]:
    """The socket names ``$(circus.sockets.NAME)`` / ``((circus.sockets.NAME))`` in ``text``."""
    return [
        (match.group("dollar") or match.group("parens")).lower()
        for match in SOCKET_REFERENCE.finditer(text)
    ]


# Circus's parse_env_dict pattern: only upper-case names.
_ENV_REFERENCE = re.compile(r"\$([A-Z]+[A-Z0-9_]*)")

_MULTICAST = re.compile(r"udp://(?P<address>[0-9.]+):(?P<port>\d+)")


@dataclass(frozen=True)
class CircusOptions:
    """The [circus] section, with Circus's defaults."""

    endpoint: str = DEFAULT_ENDPOINT
    endpoint_owner: str | None = None
    pubsub_endpoint: str = DEFAULT_PUBSUB_ENDPOINT
    multicast_endpoint: str | None = None
    stats_endpoint: str = DEFAULT_STATS_ENDPOINT
    statsd: bool = False
    metrics_endpoint: tuple[str, int] | None = None
    """chapiteau extension: (host, port) of the Prometheus ``/metrics`` server; None: off."""
    check_delay: float = 5.0
    warmup_delay: float = 0
    umask: int | None = None
    httpd: bool = False
    httpd_host: str = "localhost"
    httpd_port: int = 8080
    httpd_auth_file: str | None = None
    httpd_read_only: bool = False
    debug: bool = False
    debug_gc: bool = False
    pidfile: str | None = None
    loglevel: str | None = None
    logoutput: str = "-"
    loggerconfig: str | None = None
    fqdn_prefix: str | None = None
    include: str | None = None
    include_dir: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    """Every key of the section as written (after ``$(circus.env.X)`` expansion)."""


_DEFAULT = {key: option.default for key, option in WATCHER_OPTIONS.items()}


@dataclass(frozen=True)
class WatcherConfig:
    """One [watcher:NAME] section, parsed and checked; defaults are the option table's."""

    name: str
    cmd: str
    args: str = _DEFAULT["args"]
    shell: bool = _DEFAULT["shell"]
    shell_args: str | None = _DEFAULT["shell_args"]
    executable: str | None = _DEFAULT["executable"]
    working_dir: str | None = _DEFAULT["working_dir"]
    """None means the supervisor's working directory."""
    uid: int | None = _DEFAULT["uid"]
    gid: int | None = _DEFAULT["gid"]
    """The user's primary group when ``uid`` is set and ``gid`` is not."""
    numprocesses: int = _DEFAULT["numprocesses"]
    warmup_delay: float = _DEFAULT["warmup_delay"]
    singleton: bool = _DEFAULT["singleton"]
    send_hup: bool = _DEFAULT["send_hup"]
    stop_signal: int = _DEFAULT["stop_signal"]
    stop_children: bool = _DEFAULT["stop_children"]
    graceful_timeout: float = _DEFAULT["graceful_timeout"]
    max_retry: int = _DEFAULT["max_retry"]
    priority: int = _DEFAULT["priority"]
    use_sockets: bool = _DEFAULT["use_sockets"]
    copy_env: bool = _DEFAULT["copy_env"]
    copy_path: bool = _DEFAULT["copy_path"]
    respawn: bool = _DEFAULT["respawn"]
    autostart: bool = _DEFAULT["autostart"]
    on_demand: bool = _DEFAULT["on_demand"]
    close_child_stdin: bool = _DEFAULT["close_child_stdin"]
    close_child_stdout: bool = _DEFAULT["close_child_stdout"]
    close_child_stderr: bool = _DEFAULT["close_child_stderr"]
    rlimits: dict[str, int] = field(default_factory=dict)
    """Lower-case resource name (``nofile``) to limit; soft = hard."""
    hooks: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """Hook name to (dotted path, ignore failure)."""
    stdout_stream: dict[str, str] = field(default_factory=dict)
    stderr_stream: dict[str, str] = field(default_factory=dict)
    max_age: int = _DEFAULT["max_age"]
    max_age_variance: int = _DEFAULT["max_age_variance"]
    readiness: str = _DEFAULT["readiness"]
    """``started`` or ``notify`` (READY=1 on NOTIFY_SOCKET)."""
    ready_delay: float = _DEFAULT["ready_delay"]
    ready_timeout: float = _DEFAULT["ready_timeout"]
    watchdog_sec: float = _DEFAULT["watchdog_sec"]
    max_replacing: int = _DEFAULT["max_replacing"]
    """Old processes a reload replaces at once; 0: all at once."""
    drain_delay: float = _DEFAULT["drain_delay"]
    """Seconds between closing a process's doors and its stop signal."""
    virtualenv: str | None = _DEFAULT["virtualenv"]
    virtualenv_py_ver: str | None = _DEFAULT["virtualenv_py_ver"]
    stdin_socket: str | None = _DEFAULT["stdin_socket"]
    env: dict[str, str] = field(default_factory=dict)
    """The complete environment of the watcher's processes."""
    sockets: tuple[str, ...] = _DEFAULT["sockets"]
    """Names of the sockets the processes inherit, in order of first mention."""
    socket_protocol: str = _DEFAULT["socket_protocol"]
    umask: int | None = _DEFAULT["umask"]
    """chapiteau extension: the processes' umask; None inherits the supervisor's."""
    options: dict[str, str] = field(default_factory=dict)
    """Every key of the section as written, after expansion (plugins read these)."""


@dataclass(frozen=True)
class SocketConfig:
    """A [socket:NAME] section. The broker binds it; the supervisor only needs the name."""

    name: str
    """Lower-cased, as in Circus."""
    options: dict[str, str]
    """The options as written, ``$(circus.env.X)`` expanded, not interpreted (the broker does)."""


@dataclass(frozen=True)
class PluginConfig:
    """A [plugin:NAME] section, run as the watcher ``plugin:NAME``.

    ``watcher`` carries the watcher options of the section with the plugin
    defaults (priority 1, singleton, copy_env, copy_path, outputs closed unless
    [circus] debug) and circusd's plugin runner command line as ``cmd``; it is
    the same object as the plugin's entry in ``Config.watchers``. The built-in
    flapping plugin runs no process: its ``cmd`` is empty and it has no entry.
    """

    name: str
    """The full section name, ``plugin:NAME``: also the name of its watcher."""
    use: str
    config: dict[str, str]
    """Every key of the section, including ``use``, as written after expansion."""
    watcher: WatcherConfig


@dataclass(frozen=True)
class Flapping:
    """Crash-loop policy; Circus's [plugin:flapping] options when configured."""

    window: float = CRASH_WINDOW
    max_retry: int = -1
    """Crash-loop backoff rounds before the watcher is stopped; -1 never stops it."""


@dataclass(frozen=True)
class Config:
    """Everything the supervisor needs from a configuration file."""

    path: str
    circus: CircusOptions
    watchers: tuple[WatcherConfig, ...]
    """Sorted by name, as in Circus (start order is decided by priority)."""
    sockets: tuple[SocketConfig, ...]
    plugins: tuple[PluginConfig, ...]
    flapping: Flapping
    """The crash-loop policy: built in, tuned by the first plugin section that uses
    ``circus.plugins.flapping.Flapping``."""
    env: dict[str, str]
    """The [env] section, expanded against the supervisor's environment."""
    files: tuple[str, ...]
    warnings: tuple[str, ...]

    def watcher(self, name: str) -> WatcherConfig | None:
        """Find a watcher by name, ignoring case as Circus's commands do."""
        wanted = name.lower()
        for watcher in self.watchers:
            if watcher.name.lower() == wanted:
                return watcher
        return None


WATCHER_FIELDS = frozenset(field.name for field in dataclasses.fields(WatcherConfig))
WATCHER_KEYS = frozenset(
    key for key, option in WATCHER_OPTIONS.items() if option.in_file and not option.family
)
"""Every key a [watcher:*] section may hold (Circus's, chapiteau's) besides the families."""
CIRCUS_KEYS = frozenset(
    {f.name for f in dataclasses.fields(CircusOptions)} - {"options"}
    | {CURVE_SECRET_KEY, CURVE_CLIENTS, "statsd_close_outputs", "httpd_close_outputs"}
    | {"stream_backend"}
)
"""Every key a [circus] section may hold."""


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration file at ``path``.

    ``environ`` stands for the supervisor's environment (``os.environ`` when
    None). Raises ConfigError on the first invalid value.
    """
    environ = dict(os.environ if environ is None else environ)
    ini = read_ini_file(path)
    warnings = list(ini.warnings)
    expansion_env = global_env(ini, environ)
    env_section = ini.sections.get("env")
    local_env = env_section.expanded(environ).options if env_section else {}

    circus_section = ini.sections.get("circus", Section("circus", {}, file=ini.path))
    _warn_unknown_keys(circus_section, CIRCUS_KEYS, (), "ignored", warnings)
    circus = _circus_options(circus_section.expanded(expansion_env), warnings)
    sockets = _sockets(ini, expansion_env)
    socket_names = {socket.name for socket in sockets}
    context = _Context(ini, environ, expansion_env, local_env, socket_names, warnings)

    watchers = []
    seen: dict[str, str] = {}
    for section in ini.sections_with_prefix("watcher:"):
        name = section.name[len("watcher:") :]
        _check_unique_name(section, name, seen)
        fate = "kept as a free-form option for plugins, as in Circus"
        _warn_unknown_keys(section, WATCHER_KEYS, FAMILIES, fate, warnings)
        watchers.append(_watcher(section, name, context, plugin_defaults=None))

    plugins = []
    flapping: Flapping | None = None
    plugin_defaults = {
        "priority": "1",
        "singleton": "true",
        "copy_env": "true",
        "copy_path": "true",
        "close_child_stdout": "false" if circus.debug else "true",
        "close_child_stderr": "false" if circus.debug else "true",
    }
    for section in ini.sections_with_prefix("plugin:"):
        _check_unique_name(section, section.name, seen)
        watcher = _watcher(section, section.name, context, plugin_defaults=plugin_defaults)
        use = watcher.options.get("use", "").strip()
        if not use:
            raise section.error("use", "a plugin needs 'use = dotted.path.to.PluginClass'")
        config = {key: watcher.options[key] for key in section.options}
        if use == FLAPPING_PLUGIN:
            if flapping is None:
                flapping = _flapping(section, config)
        else:
            watcher = replace(watcher, cmd=_plugin_command(section, use, config, circus))
            watchers.append(watcher)
        plugins.append(PluginConfig(section.name, use, config, watcher))

    return Config(
        path=ini.path,
        circus=circus,
        watchers=tuple(sorted(watchers, key=lambda watcher: watcher.name)),
        sockets=tuple(sockets),
        plugins=tuple(plugins),
        flapping=flapping or Flapping(),
        env=dict(local_env),
        files=tuple(ini.files),
        warnings=tuple(warnings),
    )


def _plugin_command(
    section: Section, use: str, config: dict[str, str], circus: CircusOptions
) -> str:
    """The command line circusd gives a plugin watcher.

    Unlike circusd, the plugin gets ``--check-delay`` and values with
    spaces survive, since the line is shell-quoted.
    """
    if importlib.util.find_spec("circus") is None:
        raise section.error(
            "use",
            "Circus plugins run on the circus package: install it where chapiteau runs "
            "(pip install circus), or remove the section",
        )
    settings = ":::".join(f"{key}:{value}" for key, value in sorted(config.items()) if key != "use")
    argv = [
        sys.executable,
        "-c",
        "from circus import plugins;plugins.main()",
        "--endpoint",
        circus.endpoint,
        "--pubsub",
        circus.pubsub_endpoint,
        "--check-delay",
        str(circus.check_delay),
        "--log-level",
        circus.loglevel or "info",
    ]
    if settings:
        argv += ["--config", settings]
    return shlex.join([*argv, use])


def _flapping(section: Section, config: dict[str, str]) -> Flapping:
    """The ``window`` and ``max_retry`` of a [plugin:flapping] section (values expanded)."""
    values = Section(section.name, config, section.sources, section.file)
    window = values.get_float("window", None)
    max_retry = values.get_int("max_retry", None)
    return Flapping(
        window=CRASH_WINDOW if window is None else window,
        max_retry=-1 if max_retry is None else max_retry,
    )


@dataclass(frozen=True)
class _Context:
    """What every watcher section is checked against."""

    ini: IniFile
    environ: dict[str, str]
    expansion_env: dict[str, str]
    local_env: dict[str, str]
    socket_names: set[str]
    warnings: list[str]


def _warn_unknown_keys(
    section: Section,
    known: frozenset[str],
    prefixes: tuple[str, ...],
    fate: str,
    warnings: list[str],
) -> None:
    """Warn about each key that is no option, naming the closest one (likely a typo).

    A key with a dot (``flapping.max_retry``) is taken to be a plugin's and is
    not reported.
    """
    for key in section.options:
        if key in known or key.startswith(prefixes) or "." in key:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "check its spelling"
        warnings.append(str(section.error(key, f"unknown key, {fate}; {hint}")))


def _check_unique_name(section: Section, name: str, seen: dict[str, str]) -> None:
    if not name.strip():
        raise section.error(None, "the section needs a name after the colon, e.g. [watcher:web]")
    other = seen.get(name.lower())
    if other is not None:
        raise section.error(
            None,
            f"the name {name!r} differs from {other!r} only by case; "
            "watcher names are looked up ignoring case, rename one of them",
        )
    seen[name.lower()] = name


def _circus_options(section: Section, warnings: list[str]) -> CircusOptions:
    statsd = _statsd(section, warnings)
    stats_endpoint = section.get_str("stats_endpoint")
    httpd = _httpd(section)
    metrics_endpoint = _metrics_endpoint(section)
    loglevel = _loglevel(section)
    multicast = section.get_str("multicast_endpoint") or None
    if multicast is not None:
        _check_multicast(section, multicast)
    check_delay = section.get_float("check_delay", 5.0)
    warmup = WATCHER_OPTIONS["warmup_delay"]  # read and checked as a watcher's
    try:
        warmup_delay = warmup.parse_text(section.get_str("warmup_delay", "0") or "")
    except OptionError as exc:
        raise section.error("warmup_delay", str(exc)) from None
    return CircusOptions(
        endpoint=section.get_str("endpoint", DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT,
        endpoint_owner=section.get_str("endpoint_owner"),
        pubsub_endpoint=section.get_str("pubsub_endpoint", DEFAULT_PUBSUB_ENDPOINT)
        or DEFAULT_PUBSUB_ENDPOINT,
        multicast_endpoint=multicast,
        stats_endpoint=stats_endpoint or DEFAULT_STATS_ENDPOINT,
        statsd=statsd,
        metrics_endpoint=metrics_endpoint,
        check_delay=check_delay if check_delay is not None else 5.0,
        warmup_delay=warmup_delay,
        umask=section.get_octal("umask", None),
        httpd=httpd,
        httpd_host=section.get_str("httpd_host", "localhost") or "localhost",
        httpd_port=section.get_int("httpd_port", 8080) or 8080,
        httpd_auth_file=section.get_str("httpd_auth_file"),
        httpd_read_only=section.get_bool("httpd_read_only", False),
        debug=section.get_bool("debug", False),
        debug_gc=section.get_bool("debug_gc", False),
        pidfile=section.get_str("pidfile"),
        loglevel=loglevel,
        logoutput=section.get_str("logoutput", "-") or "-",
        loggerconfig=section.get_str("loggerconfig"),
        fqdn_prefix=section.get_str("fqdn_prefix"),
        include=section.get_str("include"),
        include_dir=section.get_str("include_dir"),
        options=dict(section.options),
    )


def _statsd(section: Section, warnings: list[str]) -> bool:
    """``statsd``; Circus turns it on when stats_endpoint is set (with a DeprecationWarning)."""
    statsd = section.get_bool("statsd", False)
    if section.get_str("stats_endpoint") is not None and not statsd:
        message = "setting stats_endpoint turns statsd on; set statsd = true to say so"
        warnings.append(str(section.error("stats_endpoint", message)))
        return True
    return statsd


def _httpd(section: Section) -> bool:
    """``httpd``: the dashboard, which needs aiohttp and cannot use CURVE yet."""
    httpd = section.get_bool("httpd", False)
    if httpd and importlib.util.find_spec("aiohttp") is None:
        raise section.error(
            "httpd", "the dashboard needs aiohttp: install chapiteau[web], or remove httpd"
        )
    if httpd and section.get_str(CURVE_SECRET_KEY):
        raise section.error(
            "httpd",
            f"the dashboard cannot reach CURVE endpoints yet: remove httpd or {CURVE_SECRET_KEY}",
        )
    return httpd


def _loglevel(section: Section) -> str | None:
    """``loglevel``, lower-cased, or None when unset (the command line's, or info)."""
    loglevel = section.get_str("loglevel")
    if loglevel is None:
        return None
    if loglevel.lower() not in LOG_LEVELS:
        raise section.error(
            "loglevel", f"{loglevel!r} is not one of {', '.join(sorted(LOG_LEVELS))}"
        )
    return loglevel.lower()


def _metrics_endpoint(section: Section) -> tuple[str, int] | None:
    """``[circus] metrics_endpoint = HOST:PORT`` (``[::1]:PORT`` for IPv6), or None when unset.

    The Prometheus client is the optional extra ``chapiteau[metrics]``: asking
    for metrics without it is an error here, not at the first scrape.
    """
    value = (section.get_str("metrics_endpoint") or "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise section.error(
            "metrics_endpoint", f"{value!r} is not HOST:PORT; write e.g. 127.0.0.1:9090"
        )
    if importlib.util.find_spec("prometheus_client") is None:
        raise section.error(
            "metrics_endpoint",
            "Prometheus metrics need the prometheus_client package: install "
            "chapiteau[metrics] (pip install 'chapiteau[metrics]'), or remove the key",
        )
    return host, int(port)


def _check_multicast(section: Section, value: str) -> None:
    match = _MULTICAST.fullmatch(value)
    octets = match.group("address").split(".") if match else []
    if (
        match is None
        or len(octets) != 4
        or not all(octet.isdigit() and int(octet) < 256 for octet in octets)
        or not 224 <= int(octets[0]) <= 239
        or not 0 < int(match.group("port")) < 65536
    ):
        raise section.error(
            "multicast_endpoint",
            f"{value!r} is not udp://ADDRESS:PORT with a multicast address (224.0.0.0 to "
            "239.255.255.255); leave it empty to disable discovery",
        )


def _sockets(ini: IniFile, env: Mapping[str, str]) -> list[SocketConfig]:
    sockets: list[SocketConfig] = []
    seen: dict[str, str] = {}
    for section in ini.sections_with_prefix("socket:"):
        name = section.name[len("socket:") :].lower()
        if not name.strip():
            raise section.error(None, "the section needs a name after the colon, e.g. [socket:web]")
        if name in seen:
            raise section.error(
                None,
                f"socket names ignore case, and [{seen[name]}] already defines {name!r}",
            )
        seen[name] = section.name
        sockets.append(SocketConfig(name, section.expanded(env).options))
    return sockets


def _watcher(
    raw: Section,
    name: str,
    context: _Context,
    *,
    plugin_defaults: Mapping[str, str] | None,
) -> WatcherConfig:
    """Read one watcher (or plugin) section through the option table, then the rules
    that involve other sections: the environment, users, sockets, the virtualenv."""
    section = Section(raw.name, {**(plugin_defaults or {}), **raw.options}, raw.sources, raw.file)
    copy_env = section.expanded(context.expansion_env).get_bool("copy_env", False)
    env = _watcher_env(section, name, context, copy_env)
    # Circus's second expansion: every value but name and env sees the
    # watcher's own env on top of the global one.
    section = _expand_watcher(section, {**context.expansion_env, **env})
    if "env" in raw.options:
        message = f"ignored, as in Circus; use an [env:{name}] section"
        context.warnings.append(str(raw.error("env", message)))

    values, families = _table_values(section)
    if plugin_defaults is None and not values["cmd"].strip():
        raise section.error("cmd", "a watcher needs a command: cmd = /path/to/program")
    broken = check_watcher(values)
    if broken is not None:
        raise section.error(*broken)
    if values["numprocesses"] == 0 and not values["singleton"]:
        message = "0 processes: nothing runs until incr"
        context.warnings.append(str(section.error("numprocesses", message)))
    if values["shell_args"] is not None and not values["shell"]:
        context.warnings.append(str(section.error("shell_args", "ignored without shell = true")))

    if values["copy_path"]:
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if values["virtualenv"] is not None:
        _apply_virtualenv(section, env, values["virtualenv"], values["virtualenv_py_ver"])
    values["uid"], values["gid"] = _user_and_group(section)
    values["sockets"] = _socket_names(section, values["sockets"], context)
    values["stdin_socket"] = _stdin_socket(section, context)
    _check_socket_protocol(section, values, context)
    values.update(
        name=name,
        env=env,
        rlimits={key.lower(): limit for key, limit in families["rlimit_"].items()},
        hooks=families["hooks."],
        stdout_stream=_stream(section, "stdout_stream", families),
        stderr_stream=_stream(section, "stderr_stream", families),
        options=dict(section.options),
    )
    return WatcherConfig(**{key: values[key] for key in WATCHER_FIELDS})


def _table_values(section: Section) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every option of the table: the section's value, parsed and checked, or the default;
    and the members of each family (``rlimit_`` → {``nofile``: 4096}) by their short key."""
    values = {key: option.default for key, option in WATCHER_OPTIONS.items() if not option.family}
    families: dict[str, dict[str, Any]] = {prefix: {} for prefix in FAMILIES}
    for key, text in section.options.items():
        try:
            option = watcher_option(key)
            if key == "env" or not option.in_file:
                continue
            value = option.parse_text(text)
        except UnknownOption:
            continue
        except OptionError as exc:
            raise section.error(key, str(exc)) from None
        if option.family:
            families[option.name][key[len(option.name) :]] = value
        else:
            values[key] = value
    return values, families


def _check_socket_protocol(section: Section, values: Mapping[str, Any], context: _Context) -> None:
    all_sockets = values["use_sockets"] and context.socket_names
    if values["socket_protocol"] == "systemd" and not values["sockets"] and not all_sockets:
        raise section.error(
            "socket_protocol",
            "systemd passes the watcher's sockets, and this watcher declares none "
            "(LISTEN_FDS would be 0): name them with 'sockets = NAME ...', or remove the key",
        )


def _expand_watcher(section: Section, env: Mapping[str, str]) -> Section:
    options = {
        key: value if key == "env" else expand_env(value, env)
        for key, value in section.options.items()
    }
    return Section(section.name, options, section.sources, section.file)


def _watcher_env(section: Section, name: str, context: _Context, copy_env: bool) -> dict[str, str]:
    """Compute the environment of a watcher's processes (Circus's, with the fixes above)."""
    env = copied_env(context.environ) if copy_env else {}
    configured = dict(context.local_env)
    for env_section in context.ini.sections_with_prefix("env:"):
        patterns = env_section.name[len("env:") :].split(",")
        if any(fnmatch.fnmatchcase(name, pattern.strip()) for pattern in patterns):
            configured.update(env_section.options)
    for key, value in configured.items():
        env[key] = _ENV_REFERENCE.sub(
            lambda match: context.environ.get(match.group(1), ""), value
        ).strip()
    return env


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker of ``env`` starts with: DEFAULT_PATH if it has no PATH."""
    return {**({"PATH": DEFAULT_PATH} if "PATH" not in env else {}), **env}


def copied_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What ``copy_env`` copies of the supervisor's environment ``environ``."""
    return {key: value for key, value in environ.items() if key not in PROCESS_OWN_VARIABLES}


def _user_and_group(section: Section) -> tuple[int | None, int | None]:
    uid_value = section.get_str("uid")
    gid_value = section.get_str("gid")
    uid = None
    primary_gid = None
    if uid_value is not None and uid_value.strip():
        uid, primary_gid = _resolve_user(section, uid_value.strip())
    gid = primary_gid
    if gid_value is not None and gid_value.strip():
        gid = _resolve_group(section, gid_value.strip())
    return uid, gid


class UnknownIdentity(LookupError):
    """A user or group name that this system does not know; str() says which."""


def user_ids(value: str) -> tuple[int, int | None]:
    """The uid and primary gid of a user name or number.

    A number is accepted even without a passwd entry (it then has no primary
    group); shared by the config, the control commands and ``endpoint_owner``.
    """
    text = value.strip()
    if text.isdigit():
        try:
            return int(text), pwd.getpwuid(int(text)).pw_gid
        except KeyError:
            return int(text), None
    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise UnknownIdentity(f"no user named {text!r} on this system") from None
    return entry.pw_uid, entry.pw_gid


def group_id(value: str) -> int:
    """The gid of a group name or number."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UnknownIdentity(f"no group named {text!r} on this system") from None


def _resolve_user(section: Section, value: str) -> tuple[int, int | None]:
    try:
        return user_ids(value)
    except UnknownIdentity as exc:
        raise section.error("uid", str(exc)) from None


def _resolve_group(section: Section, value: str) -> int:
    try:
        return group_id(value)
    except UnknownIdentity as exc:
        raise section.error("gid", str(exc)) from None


def _stream(
    section: Section, stream: str, families: Mapping[str, dict[str, str]]
) -> dict[str, str]:
    conf = families[f"{stream}."]
    stream_class = conf.get("class")
    if stream_class is not None and "." not in stream_class and stream_class not in STREAM_CLASSES:
        raise section.error(
            f"{stream}.class",
            f"{stream_class!r} is not a stream class; use a dotted path or one of "
            + ", ".join(sorted(STREAM_CLASSES)),
        )
    return dict(conf)


def _stdin_socket(section: Section, context: _Context) -> str | None:
    value = section.get_str("stdin_socket")
    if value is None or not value.strip():
        return None
    name = value.strip().lower()
    if name not in context.socket_names:
        raise section.error("stdin_socket", f"there is no [socket:{name}] section")
    return name


def _socket_names(
    section: Section, declared: tuple[str, ...], context: _Context
) -> tuple[str, ...]:
    """List the sockets a watcher uses: ``sockets``, references in the command, stdin_socket."""
    found = [("sockets", name) for name in declared]
    for key in ("cmd", "args", "shell_args"):
        found.extend((key, name) for name in socket_references(section.get_str(key, "") or ""))
    stdin_socket = section.get_str("stdin_socket")
    if stdin_socket and stdin_socket.strip():
        found.append(("stdin_socket", stdin_socket.strip().lower()))
    for key, name in found:
        if name not in context.socket_names:
            raise section.error(
                key, f"the watcher uses socket {name!r} but there is no [socket:{name}] section"
            )
    return tuple(dict.fromkeys(name for _, name in found))


def _apply_virtualenv(
    section: Section, env: dict[str, str], virtualenv: str, py_ver: str | None
) -> None:
    """Prepend the virtualenv to PATH and PYTHONPATH, as Circus's load_virtualenv does."""
    version = py_ver or f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        os.path.join(virtualenv, "lib", f"python{version}", "site-packages"),
        os.path.join(virtualenv, "lib", f"pypy{version}", "site-packages"),
    ]
    sitedir = next((path for path in candidates if os.path.isdir(path)), None)
    if sitedir is None:
        raise section.error(
            "virtualenv",
            f"{candidates[0]} does not exist; check virtualenv and virtualenv_py_ver",
        )
    packages: list[str] = []
    for entry in sorted(os.listdir(sitedir)):
        if not entry.endswith(".pth"):
            continue
        with open(os.path.join(sitedir, entry), encoding="utf-8", errors="replace") as pth:
            for line in pth:
                line = line.rstrip()
                if not line or line.startswith(("#", "import")):
                    continue
                package = os.path.abspath(os.path.join(sitedir, line))
                if os.path.exists(package) and package not in packages:
                    packages.append(package)
    existing = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    python_path = packages + [path for path in existing if path not in packages]
    if sitedir not in python_path:
        python_path.append(sitedir)
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    bin_dir = os.path.join(virtualenv, "bin")
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
