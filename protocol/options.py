"""The table of watcher options: every ``[watcher:*]`` key, its type, default and rules.

Theory of operation. Each `Option` names a key, its `Kind` (how a value is
read from a configuration file, checked as a JSON value of ``add``/``set``,
read from a chapiteauctl word and printed back), its default, a check of the
value, and what the supervisor does with it: whether ``set`` may change it at
run time, whether a change needs new processes (a reload), whether it
decides what runs as whom (refused to a client that is not the
``endpoint_owner``), and under which name ``options``/``get`` show it.
A key ending in ``.`` or ``_`` is a family (``hooks.before_start``,
``rlimit_nofile``, ``stdout_stream.filename``). The supervisor's INI loader, its
``set``/``get``/``options`` commands and chapiteauctl all read this table, so
they agree by construction: to add an option, add a row here.

Parsers (these and protocol/words.py's) raise `OptionError` with a message
that does not say where the value came from: the caller adds the file, section
and key (or the command and property). Pure: no I/O, standard library only
(chapiteauctl imports it).
"""

from __future__ import annotations

import json
import resource
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chapiteau.protocol.signals import SignalError, parse_signal
from chapiteau.protocol.words import (
    OptionError,
    parse_bool,
    parse_float,
    parse_int,
    parse_octal,
)

HOOK_NAMES = (
    "before_start",
    "after_start",
    "before_stop",
    "after_stop",
    "before_spawn",
    "after_spawn",
    "before_signal",
    "after_signal",
    "before_reap",
    "after_reap",
    "extended_stats",
)
"""The hooks a watcher may have."""

SOCKET_PROTOCOLS = ("circus", "systemd")
READINESS = ("started", "notify")
"""When a process counts as ready: once it runs (after ``ready_delay``), or when it says
``READY=1`` on its NOTIFY_SOCKET."""


class WrongType(OptionError):
    """A JSON value of the wrong type; ``str()`` follows the quoted key (Circus's texts:
    ``'numprocesses' isn't an integer``)."""


# -- parsers of configuration words ------------------------------------------------------------


def parse_int_or_float(text: str) -> int | float:
    """A number that Circus reads as an int: an int when whole (``options`` shows ``0``)."""
    number = parse_float(text)
    return int(number) if number.is_integer() else number


def parse_signal_word(text: str | int) -> int:
    """A signal number or name (``15``, ``TERM``, ``SIGTERM``)."""
    try:
        return parse_signal(text)
    except SignalError as exc:
        raise OptionError(str(exc)) from None


def parse_hook(value: str | list[Any]) -> tuple[str, bool]:
    """A hook: ``"package.module.function[, FLAG]"``, split on the first comma, or
    ``[path, flag]``; FLAG is a boolean word meaning "ignore a failure" (false if absent)."""
    if isinstance(value, str):
        path, _, flag = value.partition(",")
        ignore = parse_bool(flag.strip()) if flag.strip() else False
    elif (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], bool)
    ):
        path, ignore = value
    else:
        raise OptionError(f'{value!r} isn\'t a hook; use "package.module.function[, true]"')
    if not path.strip():
        raise OptionError("a hook needs a dotted path: package.module.function")
    return path.strip(), ignore


def parse_rlimit(text: str) -> int:
    """A resource limit: a number, or an empty value for no limit (RLIM_INFINITY)."""
    if not text.strip():
        return resource.RLIM_INFINITY
    try:
        limit = int(text)
    except ValueError:
        limit = -2
    if limit < 0 and limit != resource.RLIM_INFINITY:
        raise OptionError(f"{text!r} is not a limit; use a number or an empty value")
    return limit


def parse_socket_protocol(text: str) -> str:
    """``circus`` (fds named in the command line) or ``systemd`` (LISTEN_FDS)."""
    protocol = text.strip().lower()
    if protocol not in SOCKET_PROTOCOLS:
        raise OptionError(f"{protocol!r} is not a socket protocol; use circus or systemd")
    return protocol


def parse_readiness(text: str) -> str:
    """``started`` (ready once it runs) or ``notify`` (ready when it says READY=1)."""
    readiness = text.strip().lower()
    if readiness not in READINESS:
        raise OptionError(f"{readiness!r} is not a readiness; use started or notify")
    return readiness


def parse_names(text: str) -> tuple[str, ...]:
    """Lower-cased names separated by spaces or commas (``sockets = web, admin``)."""
    return tuple(name.lower() for name in text.replace(",", " ").split())


def parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY2=VALUE2]`` (as ``get NAME env`` prints it) or a JSON object."""
    if text.lstrip().startswith("{"):
        try:
            env = json.loads(text)
        except ValueError as exc:
            raise OptionError(f"invalid JSON object: {exc}") from None
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise OptionError("a JSON value must be an object of strings")
        return env
    env = {}
    for pair in filter(None, text.split(",")):
        key, sep, item = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{pair!r} is not KEY=VALUE; write env A=1,B=2")
        env[key.strip()] = item
    return env


def _unknown_hook(name: str) -> str | None:
    if name in HOOK_NAMES:
        return None
    return f"{name!r} is not a hook; use one of {', '.join(sorted(HOOK_NAMES))}"


def parse_hook_list(text: str) -> dict[str, str]:
    """``HOOK:dotted.path[,HOOK2:path2]``: chapiteauctl's way to give ``hooks``."""
    hooks = {}
    for item in filter(None, text.split(",")):
        name, sep, path = item.partition(":")
        if not sep or ":" in path:
            raise OptionError(f"{item!r} is not HOOK:dotted.path")
        problem = _unknown_hook(name)
        if problem is not None:
            raise OptionError(problem)
        hooks[name] = path
    return hooks


def _hook_word(text: str) -> str:
    """A hook word, checked as the daemon will and sent as it is."""
    parse_hook(text)
    return text


def _stream_word(text: str) -> int | str:
    """A stream option word: numbers (``max_bytes``, ``backup_count``) go as numbers."""
    return int(text) if text.isdigit() else text


def _same(text: str) -> str:
    return text


def _env_text(value: Any) -> str:
    if not value:
        return ""
    return ",".join(f"{key}={item}" for key, item in sorted(value.items()))


def show(value: Any) -> str:
    """A value as circusctl prints it: None as empty, anything else as ``str()``."""
    return "" if value is None else str(value)


# -- JSON values of add/set ----------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise WrongType("isn't a valid object")
    for name, item in value.items():
        if not isinstance(item, str):
            raise OptionError(f"{name!r} isn't a string")
    return dict(value)


def _json_hooks(value: Any) -> dict[str, tuple[str, bool]]:
    if not isinstance(value, dict):
        raise OptionError(f"{value!r} isn't a valid hook dict")
    problem = next(filter(None, map(_unknown_hook, value)), None)
    if problem is not None:
        raise OptionError(problem)
    return {name: parse_hook(hook) for name, hook in value.items()}


def _json_hook(value: Any) -> tuple[str, bool]:
    if not isinstance(value, str | list):
        raise OptionError(f'{value!r} isn\'t a hook; use "package.module.function[, true]"')
    return parse_hook(value)


def _json_stream(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise WrongType("isn't a valid object")
    if "class" not in value:
        raise WrongType("must have a 'class' key")
    return {name: str(item) for name, item in value.items()}


def _json_args(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(arg, str) for arg in value):
        return shlex.join(value)
    raise WrongType("isn't a string or a list of strings")


def _json_stream_key(value: Any) -> str:
    if not isinstance(value, str | int | float | bool):
        raise WrongType("isn't a string")
    return str(value)


def _json_rlimit(value: Any) -> int:
    if value is None:
        return resource.RLIM_INFINITY
    if not _is_int(value):
        raise WrongType("isn't an integer")
    return value


def _json_signal(value: Any) -> int:
    if not (_is_int(value) or isinstance(value, str)):
        raise WrongType("isn't an integer")
    return parse_signal_word(value)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise OptionError(f"invalid JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise OptionError("a JSON value must be an object")
    return value


def _typed(accepts: Callable[[Any], bool], words: str) -> Callable[[Any], Any]:
    """A JSON reader that takes the value as it is when ``accepts`` it, Circus's error else."""

    def read(value: Any) -> Any:
        if not accepts(value):
            raise WrongType(f"isn't {words}")
        return value

    return read


@dataclass(frozen=True)
class Kind:
    """A type of option: how a value is read from each source and printed."""

    name: str
    from_text: Callable[[str], Any]
    """A configuration file's word to the value; raises OptionError."""
    from_json: Callable[[Any], Any]
    """An ``add``/``set`` JSON value to the value; raises OptionError whose text, after
    the quoted key, is Circus's (``'numprocesses' isn't an integer``)."""
    from_word: Callable[[str], Any]
    """A chapiteauctl ``set`` word to the JSON value it sends."""
    to_text: Callable[[Any], str] = show
    """How chapiteauctl prints a value of ``options``/``get``."""


INT = Kind("int", parse_int, _typed(_is_int, "an integer"), parse_int)
FLOAT = Kind("float", parse_float, _typed(_is_number, "a number"), parse_float)
INT_OR_FLOAT = Kind("int or float", parse_int_or_float, FLOAT.from_json, parse_float)
BOOL = Kind(
    "bool", parse_bool, _typed(lambda v: isinstance(v, bool), "a valid boolean"), parse_bool
)
STR = Kind("str", _same, _typed(lambda v: isinstance(v, str), "a string"), _same)
USER = Kind(
    "user", _same, _typed(lambda v: _is_int(v) or isinstance(v, str), "an integer or string"), _same
)
SIGNAL = Kind("signal", parse_signal_word, _json_signal, parse_signal_word)
ARGS = Kind("args", _same, _json_args, _same)
ENV = Kind("env", parse_env, _json_env, parse_env, _env_text)
HOOKS = Kind("hooks", parse_hook_list, _json_hooks, parse_hook_list)
HOOK = Kind("hook", parse_hook, _json_hook, _hook_word)
RLIMIT = Kind("rlimit", parse_rlimit, _json_rlimit, parse_int)
STREAM = Kind("stream", _json_object, _json_stream, _json_object)
STREAM_KEY = Kind("stream option", _same, _json_stream_key, _stream_word)
OCTAL = Kind("octal", parse_octal, _typed(_is_int, "an integer"), parse_octal)
SOCKET_PROTOCOL = Kind("socket protocol", parse_socket_protocol, STR.from_json, _same)
READINESS_KIND = Kind("readiness", parse_readiness, STR.from_json, parse_readiness)
NAMES = Kind("names", parse_names, STR.from_json, _same)


# -- checks ---------------------------------------------------------------------------------------


def not_negative(value: float) -> str | None:
    """Refuse a negative number."""
    return f"{value} is negative" if value < 0 else None


def retry_count(value: int) -> str | None:
    """A number of retries, -1 meaning no limit."""
    return f"{value} is not a retry count; use -1 for no limit" if value < -1 else None


RLIMITS: dict[str, int] = {
    name[len("RLIMIT_") :]: getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_")
}
"""What ``rlimit_NAME`` limits, by ``NAME.upper()``: the resource number for setrlimit(2).

Every RLIMIT_ constant of the resource module, as in Circus; ``OFILE`` too, the
BSD alias of ``NOFILE`` (the same number).
"""


def _resource_name(key: str) -> str | None:
    name = key[len("rlimit_") :]
    if name.upper() in RLIMITS:
        return None
    return f"{name.lower()!r} is not a resource limit (see setrlimit(2))"


def _hook_name(key: str) -> str | None:
    return _unknown_hook(key[len("hooks.") :])


@dataclass(frozen=True)
class Option:
    """One watcher option."""

    name: str
    """The key; a family of keys when it ends with ``.`` or ``_`` (``hooks.``, ``rlimit_``)."""
    kind: Kind
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    """Returns what is wrong with a parsed value, None when it is fine."""
    settable: bool = True
    """``add`` and ``set`` accept it (Circus's list, plus priority, autostart, use_sockets)."""
    reloads: bool = False
    """Only new processes can have a new value: ``set`` reloads a running watcher."""
    owner_only: bool = False
    """It decides what runs as whom: with endpoint_owner, only for the owner's uid."""
    shown_as: str | None = None
    """Its name in the ``options``/``get`` replies; None when they do not show it."""
    check_key: Callable[[str], str | None] | None = None
    """For a family: what is wrong with a member's key, None when it is one."""
    in_file: bool = True
    """A ``[watcher:*]`` section may hold it (``hooks`` as one object is for ``set`` only)."""
    extension: bool = False
    """chapiteau's own: ``options``/``get`` show it only when it is not its default, so that
    a Circus configuration gets circusd's reply."""

    @property
    def family(self) -> bool:
        """A family of keys (``hooks.NAME``) rather than one key."""
        return self.name.endswith((".", "_"))

    def parse_text(self, text: str) -> Any:
        """A configuration file's value, parsed and checked."""
        return self._checked(self.kind.from_text(text))

    def parse_json(self, key: str, value: Any) -> Any:
        """An ``add``/``set`` value of ``key``, checked; the error names ``key`` (in
        Circus's words for a wrong type)."""
        try:
            return self._checked(self.kind.from_json(value))
        except WrongType as exc:
            raise OptionError(f"{key!r} {exc}") from None
        except OptionError as exc:
            raise OptionError(f"{key}: {exc}") from None

    def _checked(self, value: Any) -> Any:
        problem = self.check(value) if self.check is not None else None
        if problem is not None:
            raise OptionError(problem)
        return value


def _options(*options: Option) -> dict[str, Option]:
    return {option.name: option for option in options}


def _shown(name: str, kind: Kind, default: Any = None, **rules: Any) -> Option:
    return Option(name, kind, default, shown_as=name, **rules)


def _extension(name: str, kind: Kind, default: Any = None, **rules: Any) -> Option:
    """A chapiteau option that ``options``/``get`` show when it is not its default."""
    return Option(name, kind, default, shown_as=name, extension=True, **rules)


def _fixed(name: str, kind: Kind, default: Any = None, **rules: Any) -> Option:
    """An option of the configuration file that ``set`` cannot change."""
    return Option(name, kind, default, settable=False, **rules)


WATCHER_OPTIONS: Mapping[str, Option] = _options(
    # What runs, as whom, where: a change needs new processes.
    _shown("cmd", STR, "", reloads=True, owner_only=True),
    _shown("args", ARGS, "", reloads=True, owner_only=True),
    _shown("shell", BOOL, False, reloads=True, owner_only=True),
    _fixed("shell_args", STR, shown_as="shell_args"),
    _fixed("executable", STR, shown_as="executable"),
    _shown("working_dir", STR, reloads=True, owner_only=True),
    _shown("uid", USER, reloads=True, owner_only=True),
    _shown("gid", USER, reloads=True, owner_only=True),
    _shown("env", ENV, {}, reloads=True, owner_only=True),
    _fixed("copy_path", BOOL, False),
    _fixed("virtualenv", STR),
    _fixed("virtualenv_py_ver", STR),
    _fixed("umask", OCTAL),
    _shown("max_age", INT, 0, check=not_negative, reloads=True),
    _shown("max_age_variance", INT, 30, check=not_negative, reloads=True),
    # Readiness (chapiteau extensions): NOTIFY_SOCKET and WATCHDOG_USEC are in the environment.
    _extension("readiness", READINESS_KIND, "started", reloads=True),
    _extension("ready_delay", INT_OR_FLOAT, 0, check=not_negative),
    _extension("ready_timeout", INT_OR_FLOAT, 90, check=not_negative),
    _extension("watchdog_sec", INT_OR_FLOAT, 0, check=not_negative, reloads=True),
    _extension("max_replacing", INT, 0, check=not_negative),
    _extension("drain_delay", INT_OR_FLOAT, 0.1, check=not_negative),
    # How many, in which order, how they stop.
    _shown("numprocesses", INT, 1, check=not_negative),
    _shown("warmup_delay", INT_OR_FLOAT, 0, check=not_negative),
    _shown("singleton", BOOL, False),
    _shown("priority", INT, 0),
    _shown("send_hup", BOOL, False),
    _shown("stop_signal", SIGNAL, 15),
    _shown("stop_children", BOOL, False),
    _shown("graceful_timeout", FLOAT, 30.0, check=not_negative),
    _shown("max_retry", INT, 5, check=retry_count),
    Option("retry_in", FLOAT),
    _shown("respawn", BOOL, True),
    Option("autostart", BOOL, True),
    _fixed("on_demand", BOOL, False, shown_as="on_demand"),
    _shown("copy_env", BOOL, False),
    # Sockets and standard streams.
    _shown("use_sockets", BOOL, False),
    _fixed("sockets", NAMES, ()),
    _fixed("stdin_socket", STR),
    _fixed("socket_protocol", SOCKET_PROTOCOL, "circus"),
    _shown("close_child_stdin", BOOL, True),
    _shown("close_child_stdout", BOOL, False),
    _shown("close_child_stderr", BOOL, False),
    *(
        Option(
            stream,
            STREAM,
            {},
            reloads=True,
            owner_only=True,
            shown_as=f"{stream}_conf",
            in_file=False,
        )
        for stream in ("stdout_stream", "stderr_stream")
    ),
    Option("stdout_stream.", STREAM_KEY, reloads=True, owner_only=True),
    Option("stderr_stream.", STREAM_KEY, reloads=True, owner_only=True),
    # Hooks and limits.
    Option("hooks", HOOKS, {}, owner_only=True, in_file=False),
    Option("hooks.", HOOK, owner_only=True, check_key=_hook_name),
    Option("rlimit_", RLIMIT, check_key=_resource_name),
    # Known to Circus, inert in 0.19 and here: no warning for them.
    _fixed("check_flapping", BOOL, True),
    _fixed("use_papa", STR),
    _fixed("stream_backend", STR),
)
"""Every watcher option, by name."""

FAMILIES = tuple(name for name, option in WATCHER_OPTIONS.items() if option.family)
"""The key prefixes of the option families: ``hooks.``, ``rlimit_``, ``stdout_stream.`` ..."""


class UnknownOption(OptionError):
    """A key that is no watcher option (``str()`` is Circus's ``unknown key 'KEY'``)."""


def watcher_option(key: str) -> Option:
    """The option ``key`` is, or the family it belongs to; UnknownOption if none, and
    OptionError for a key of a family that is not one of its members (``hooks.nope``)."""
    option = WATCHER_OPTIONS.get(key)
    if option is None:
        option = next((WATCHER_OPTIONS[p] for p in FAMILIES if key.startswith(p)), None)
    if option is None:
        raise UnknownOption(f"unknown key {key!r}")
    problem = option.check_key(key) if option.check_key is not None else None
    if problem is not None:
        raise OptionError(problem)
    return option


def settable_option(key: str) -> Option:
    """The option ``key`` of ``add``/``set``; UnknownOption if they do not take it."""
    option = watcher_option(key)
    if not option.settable:
        raise UnknownOption(f"unknown key {key!r}")
    return option


def check_watcher(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first rule between options that ``values`` breaks, as (key, message), or None."""
    if values["singleton"] and values["numprocesses"] > 1:
        return "numprocesses", "a singleton watcher runs at most 1 process"
    if values["copy_path"] and not values["copy_env"]:
        return "copy_path", "copy_path needs copy_env = true"
    if values.get("virtualenv") is not None and not values["copy_env"]:
        return "virtualenv", "virtualenv needs copy_env = true"
    if values["ready_delay"] and values["readiness"] != "started":
        return "ready_delay", "ready_delay applies to readiness = started; remove one of them"
    return None
