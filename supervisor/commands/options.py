"""Commands that read or change a watcher's options, and add or remove watchers.

``add`` and ``set`` accept Circus's option names and JSON types (its
``validate_option``), with Circus's defects fixed: an int ``rlimit_*`` works, ``hooks`` are
given as ``"path[,ignore_failure]"`` and actually load, ``priority``,
``autostart`` and ``use_sockets`` may be given to ``add``. With
``endpoint_owner``, no client may make the supervisor run anything (a
command, a hook, a stream class) for another user: changing what runs needs
``uid`` to be the endpoint's owner (Circus checks ``add`` only).
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import resource
import shlex
from typing import TYPE_CHECKING, Any

from chapiteau.protocol.circus_messages import (
    BOOL_OPTIONS,
    COMMAND_ERROR,
    HOOK_NAMES,
    INT_OPTIONS,
    NUMBER_OPTIONS,
    STRING_OPTIONS,
)
from chapiteau.protocol.signals import SignalError, parse_signal
from chapiteau.supervisor.commands.base import (
    CommandError,
    Deferred,
    Fields,
    Supervisor,
    bool_property,
    command,
    replacing,
    watcher_named,
)
from chapiteau.supervisor.config import (
    SOCKET_REFERENCE,
    UnknownIdentity,
    WatcherConfig,
    copied_env,
    group_id,
    user_ids,
)
from chapiteau.supervisor.endpoints.controller import EndpointError, owner_uid

if TYPE_CHECKING:
    from chapiteau.supervisor.watcher import Watcher

OTHER_KEYS = frozenset(
    {"uid", "gid", "stop_signal", "env", "args", "stdout_stream", "stderr_stream", "hooks"}
)
VALID_KEYS = INT_OPTIONS | NUMBER_OPTIONS | BOOL_OPTIONS | STRING_OPTIONS | OTHER_KEYS
VALID_PREFIXES = ("stdout_stream.", "stderr_stream.", "hooks.", "rlimit_")

RELOAD_KEYS = frozenset(
    {"working_dir", "uid", "gid", "shell", "env", "cmd", "args", "max_age", "max_age_variance"}
)
"""Keys whose new value only new processes can have: a running watcher is reloaded."""
OWNER_GUARDED = frozenset(
    {"uid", "gid", "cmd", "args", "env", "shell", "working_dir", "hooks"}
    | {"stdout_stream", "stderr_stream"}
)
"""Keys that decide what runs, as whom: with endpoint_owner only for the owner's uid."""

GET_KEYS = (
    "numprocesses",
    "warmup_delay",
    "working_dir",
    "uid",
    "gid",
    "send_hup",
    "stop_signal",
    "stop_children",
    "shell",
    "shell_args",
    "env",
    "max_retry",
    "cmd",
    "args",
    "respawn",
    "graceful_timeout",
    "executable",
    "use_sockets",
    "priority",
    "copy_env",
    "singleton",
    "stdout_stream_conf",
    "stderr_stream_conf",
    "on_demand",
    "max_age",
    "max_age_variance",
    "close_child_stdin",
    "close_child_stdout",
    "close_child_stderr",
)


def validate_option(key: str, value: Any) -> None:
    """Check one ``add``/``set`` option as Circus's ``validate_option`` does (its texts)."""
    if key not in VALID_KEYS and not key.startswith(VALID_PREFIXES):
        raise CommandError(f"unknown key {key!r}")
    if key in INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CommandError(f"{key!r} isn't an integer")
    elif key in NUMBER_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError(f"{key!r} isn't a number")
    elif key in BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise CommandError(f"{key!r} isn't a valid boolean")
    elif key in STRING_OPTIONS:
        if not isinstance(value, str):
            raise CommandError(f"{key!r} isn't a string")
    elif key in ("uid", "gid"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CommandError(f"{key!r} isn't an integer or string")
    elif key == "stop_signal":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CommandError(f"{key!r} isn't an integer")
    elif key == "env":
        if not isinstance(value, dict):
            raise CommandError(f"{key!r} isn't a valid object")
        for name, item in value.items():
            if not isinstance(item, str):
                raise CommandError(f"{name!r} isn't a string")
    elif key == "args":
        if not isinstance(value, str | list) or (
            isinstance(value, list) and not all(isinstance(arg, str) for arg in value)
        ):
            raise CommandError(f"{key!r} isn't a string or a list of strings")
    elif key == "hooks":
        if not isinstance(value, dict):
            raise CommandError(f"{value!r} isn't a valid hook dict")
        for name, hook in value.items():
            if name not in HOOK_NAMES:
                raise CommandError(f"Unknown hook {name!r}")
            _hook(hook)
    elif key.startswith("hooks."):
        if key[len("hooks.") :] not in HOOK_NAMES:
            raise CommandError(f"Unknown hook {key[len('hooks.') :]!r}")
        _hook(value)
    elif key in ("stdout_stream", "stderr_stream"):
        if not isinstance(value, dict):
            raise CommandError(f"{key!r} isn't a valid object")
        if "class" not in value:
            raise CommandError(f"{key!r} must have a 'class' key")
    elif key.startswith(("stdout_stream.", "stderr_stream.")):
        if not isinstance(value, str | int | float | bool):
            raise CommandError(f"{key!r} isn't a string")
    elif key.startswith("rlimit_"):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise CommandError(f"{key!r} isn't an integer")
        if not hasattr(resource, f"RLIMIT_{key[len('rlimit_') :].upper()}"):
            raise CommandError(f"{key!r} is not a resource limit (see setrlimit(2))")


def _hook(value: Any) -> tuple[str, bool]:
    """A hook as ``"path[,ignore_failure]"`` or ``[path, ignore_failure]``."""
    if isinstance(value, str):
        path, _, flag = value.partition(",")
        ignore = flag.strip().lower() in ("1", "true", "yes", "on", "y")
    elif (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], bool)
    ):
        path, ignore = value
    else:
        raise CommandError(f'{value!r} isn\'t a hook; use "package.module.function[, true]"')
    if not path.strip():
        raise CommandError("a hook needs a dotted path: package.module.function")
    return path.strip(), ignore


def apply_options(
    config: WatcherConfig, options: dict[str, Any], sockets: set[str]
) -> WatcherConfig:
    """``config`` with the (validated) options applied."""
    changes: dict[str, Any] = {}
    rlimits = dict(config.rlimits)
    hooks = dict(config.hooks)
    streams = {
        "stdout_stream": dict(config.stdout_stream),
        "stderr_stream": dict(config.stderr_stream),
    }
    free_form = dict(config.options)
    for key, value in options.items():
        if key in ("uid", "gid"):
            continue
        if key == "retry_in":
            free_form[key] = str(value)
        elif key in INT_OPTIONS | NUMBER_OPTIONS | BOOL_OPTIONS | STRING_OPTIONS:
            changes[key] = value
        elif key == "stop_signal":
            try:
                changes[key] = parse_signal(value)
            except SignalError as exc:
                raise CommandError(str(exc)) from None
        elif key == "env":
            changes[key] = (
                {**copied_env(os.environ), **value}
                if options.get("copy_env", config.copy_env)
                else dict(value)
            )
        elif key == "args":
            changes[key] = shlex.join(value) if isinstance(value, list) else value
        elif key == "hooks":
            hooks.update({name: _hook(hook) for name, hook in value.items()})
        elif key.startswith("hooks."):
            hooks[key[len("hooks.") :]] = _hook(value)
        elif key in streams:
            streams[key] = {name: str(item) for name, item in value.items()}
        elif key.startswith(("stdout_stream.", "stderr_stream.")):
            stream, _, name = key.partition(".")
            streams[stream][name] = str(value)
        elif key.startswith("rlimit_"):
            rlimits[key[len("rlimit_") :].lower()] = (
                resource.RLIM_INFINITY if value is None else value
            )
    if "uid" in options:
        uid, primary_gid = resolve_user(options["uid"])
        changes["uid"] = uid
        changes["gid"] = primary_gid
    if "gid" in options:
        changes["gid"] = resolve_group(options["gid"])
    new = dataclasses.replace(
        config,
        **changes,
        rlimits=rlimits,
        hooks=hooks,
        stdout_stream=streams["stdout_stream"],
        stderr_stream=streams["stderr_stream"],
        options=free_form,
    )
    if new.singleton and new.numprocesses > 1:
        raise CommandError("a singleton watcher runs at most 1 process")
    for key in ("numprocesses", "graceful_timeout", "warmup_delay", "max_age", "max_age_variance"):
        if getattr(new, key) < 0:
            raise CommandError(f"{key!r} is negative")
    return dataclasses.replace(new, sockets=_socket_names(new, sockets))


def _socket_names(config: WatcherConfig, sockets: set[str]) -> tuple[str, ...]:
    found = list(config.sockets)
    for text in (config.cmd, config.args):
        for match in SOCKET_REFERENCE.finditer(text):
            found.append((match.group("dollar") or match.group("parens")).lower())
    for name in found:
        if name not in sockets:
            raise CommandError(
                f"the command uses socket {name!r}, which the config does not define"
            )
    return tuple(dict.fromkeys(found))


def resolve_user(value: int | str) -> tuple[int, int | None]:
    """uid (and primary gid) of a user name or number, as a command property."""
    try:
        return user_ids(str(value))
    except UnknownIdentity as exc:
        raise CommandError(str(exc)) from None


def resolve_group(value: int | str) -> int:
    try:
        return group_id(str(value))
    except UnknownIdentity as exc:
        raise CommandError(str(exc)) from None


def check_owner(
    arbiter: Supervisor, options: dict[str, Any], current: WatcherConfig | None
) -> None:
    """With endpoint_owner, refuse to make anything run for another user."""
    owner = arbiter.config.circus.endpoint_owner
    if owner is None:
        return
    guarded = current is None or any(
        key in OWNER_GUARDED or key.startswith(("hooks.", "stdout_stream.", "stderr_stream."))
        for key in options
    )
    if not guarded:
        return
    try:
        owner_id = owner_uid(owner)
    except EndpointError as exc:
        raise CommandError(str(exc)) from None
    if "uid" in options:
        uid: int | None = resolve_user(options["uid"])[0]
    else:
        uid = current.uid if current is not None else None
    if uid != owner_id:
        raise CommandError("uid does not match endpoint_owner")
    if "gid" in options:
        gid = resolve_group(options["gid"])
        entry = pwd.getpwuid(owner_id)
        members = grp.getgrgid(gid).gr_mem if gid != entry.pw_gid else [entry.pw_name]
        if entry.pw_name not in members:
            raise CommandError("gid does not match endpoint_owner")


def options_of(watcher: Watcher) -> dict[str, Any]:
    """The watcher's options under Circus's names, free-form keys included."""
    config = watcher.config
    values: dict[str, Any] = {key: getattr(config, key) for key in GET_KEYS if hasattr(config, key)}
    values["working_dir"] = config.working_dir or os.getcwd()
    values["env"] = dict(config.env)
    values["stdout_stream_conf"] = {k: v for k, v in config.stdout_stream.items() if k != "class"}
    values["stderr_stream_conf"] = {k: v for k, v in config.stderr_stream.items() if k != "class"}
    if config.hooks:  # Circus never shows its hooks; chapiteau does when there are some
        values["hooks"] = {
            name: f"{path},{str(ignore).lower()}" for name, (path, ignore) in config.hooks.items()
        }
    for name, limit in config.rlimits.items():
        values[f"rlimit_{name}"] = None if limit == resource.RLIM_INFINITY else limit
    fields = {field.name for field in dataclasses.fields(config)}
    for key, value in config.options.items():
        if key not in fields and not key.startswith(VALID_PREFIXES):
            values.setdefault(key, value)
    return dict(sorted(values.items()))


@command("get", "name", "keys")
async def get(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    watcher = watcher_named(arbiter, props)
    keys = props["keys"]
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CommandError("'keys' isn't a list of strings")
    values = options_of(watcher)
    missing = next((key for key in keys if key not in values), None)
    if missing is not None:
        raise CommandError(f"{missing!r} option not found")
    return {"options": {key: values[key] for key in keys}}


@command("options", "name")
async def options(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    return {"options": options_of(watcher_named(arbiter, props))}


@command("set", "name", "options")
async def set_(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    watcher = watcher_named(arbiter, props)
    changes = props["options"]
    if not isinstance(changes, dict):
        raise CommandError("'options' isn't a valid object")
    for key, value in changes.items():
        validate_option(key, value)
    check_owner(arbiter, changes, watcher.config)
    new = apply_options(watcher.config, changes, set(arbiter.sockets.sockets))
    reload = any(
        key in RELOAD_KEYS or key.startswith(("stdout_stream", "stderr_stream")) for key in changes
    )
    if not reload:
        return Deferred(watcher.configure(new, reload=False, updated=len(changes)))
    return replacing(
        lambda spawned: watcher.configure(new, reload=True, updated=len(changes), spawned=spawned),
        f"set {watcher.name} {' '.join(changes)}",
    )


@command("add", "name", "cmd")
async def add(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    name, cmd = props["name"], props["cmd"]
    if not isinstance(name, str) or not name.strip():
        raise CommandError("message invalid 'name' is not a watcher name")
    if not isinstance(cmd, str) or not cmd.strip():
        raise CommandError("message invalid 'cmd' is not a command")
    given = props.get("options") or {}
    if not isinstance(given, dict):
        raise CommandError("'options' isn't a valid object")
    given = {**given}
    if props.get("args") is not None:
        given["args"] = props["args"]
    for key, value in given.items():
        validate_option(key, value)
    check_owner(arbiter, given, None)
    if name.lower() in arbiter.watchers:
        raise CommandError(f"{name!r} already exist", COMMAND_ERROR)
    base = WatcherConfig(
        name=name, cmd=cmd, env=copied_env(os.environ) if given.get("copy_env") else {}
    )
    config = apply_options(base, given, set(arbiter.sockets.sockets))
    watcher = arbiter.add_watcher(config)
    if not bool_property(props, "start", False):
        return {}
    return Deferred(watcher.start(), lambda info: info)


@command("rm", "name")
async def rm(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    watcher = watcher_named(arbiter, props)
    nostop = bool_property(props, "nostop", False)
    return Deferred(arbiter.remove_watcher(watcher, nostop=nostop))
