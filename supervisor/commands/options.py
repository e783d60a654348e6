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
from typing import TYPE_CHECKING, Any

from chapiteau.protocol.circus_messages import COMMAND_ERROR
from chapiteau.protocol.options import (
    FAMILIES,
    WATCHER_OPTIONS,
    OptionError,
    check_watcher,
    settable_option,
    watcher_option,
)
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
    WATCHER_FIELDS,
    UnknownIdentity,
    WatcherConfig,
    copied_env,
    group_id,
    socket_references,
    user_ids,
)
from chapiteau.supervisor.endpoints.zmq_setup import EndpointError, owner_uid

if TYPE_CHECKING:
    from chapiteau.supervisor.watcher import Watcher


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``add``/``set`` options, parsed and checked through the option table."""
    parsed = {}
    for key, value in options.items():
        try:
            parsed[key] = settable_option(key).parse_json(key, value)
        except OptionError as exc:
            raise CommandError(str(exc)) from None
    return parsed


def apply_options(
    config: WatcherConfig, options: dict[str, Any], sockets: set[str]
) -> WatcherConfig:
    """``config`` with the options, as `parse_options` returns them, applied."""
    values = vars(config) | {"options": dict(config.options)}
    families = {
        "rlimit_": dict(config.rlimits),
        "hooks.": dict(config.hooks),
        "stdout_stream.": dict(config.stdout_stream),
        "stderr_stream.": dict(config.stderr_stream),
    }
    for key, value in options.items():
        option = watcher_option(key)
        if option.family:
            member = key[len(option.name) :]
            families[option.name][member.lower() if option.name == "rlimit_" else member] = value
        elif f"{key}." in families:  # a whole family: hooks, stdout_stream, stderr_stream
            families[f"{key}."] = {**families[f"{key}."], **value} if key == "hooks" else value
        elif key in WATCHER_FIELDS:
            values[key] = value
        else:
            values["options"][key] = str(value)
    if "env" in options and values["copy_env"]:
        values["env"] = {**copied_env(os.environ), **options["env"]}
    if "uid" in options:
        values["uid"], values["gid"] = resolve_user(options["uid"])
    if "gid" in options:
        values["gid"] = resolve_group(options["gid"])
    values.update(
        rlimits=families["rlimit_"],
        hooks=families["hooks."],
        stdout_stream=families["stdout_stream."],
        stderr_stream=families["stderr_stream."],
    )
    broken = check_watcher(values)
    if broken is not None:
        raise CommandError(broken[1])
    new = WatcherConfig(**values)
    return dataclasses.replace(new, sockets=_socket_names(new, sockets))


def _socket_names(config: WatcherConfig, sockets: set[str]) -> tuple[str, ...]:
    found = list(config.sockets)
    for text in (config.cmd, config.args):
        found.extend(socket_references(text))
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
        raise CommandError(f"uid: {exc}") from None


def resolve_group(value: int | str) -> int:
    """gid of a group name or number, as a command property."""
    try:
        return group_id(str(value))
    except UnknownIdentity as exc:
        raise CommandError(f"gid: {exc}") from None


def check_owner(
    arbiter: Supervisor, options: dict[str, Any], current: WatcherConfig | None
) -> None:
    """With endpoint_owner, refuse to make anything run for another user."""
    owner = arbiter.config.circus.endpoint_owner
    if owner is None:
        return
    if current is not None and not any(watcher_option(key).owner_only for key in options):
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


def options_of(watcher: Watcher, every: bool = False) -> dict[str, Any]:
    """The watcher's options under Circus's names, free-form keys included; chapiteau's
    extensions only when they are not their default, unless ``every`` (for ``get``)."""
    config = watcher.config
    values: dict[str, Any] = {
        option.shown_as: _shown(config, key)
        for key, option in WATCHER_OPTIONS.items()
        if option.shown_as is not None
        and (every or not option.extension or getattr(config, key) != option.default)
    }
    if config.hooks:  # Circus never shows its hooks; chapiteau does when there are some
        values["hooks"] = {
            name: f"{path},{str(ignore).lower()}" for name, (path, ignore) in config.hooks.items()
        }
    for name, limit in config.rlimits.items():
        values[f"rlimit_{name}"] = None if limit == resource.RLIM_INFINITY else limit
    for key, value in config.options.items():
        if key not in WATCHER_FIELDS and not key.startswith(FAMILIES):
            values.setdefault(key, value)
    return dict(sorted(values.items()))


def _shown(config: WatcherConfig, key: str) -> Any:
    """One field as ``options`` shows it (Circus's forms)."""
    value = getattr(config, key)
    if key == "working_dir":
        return value or os.getcwd()
    if key in ("stdout_stream", "stderr_stream"):
        return {name: item for name, item in value.items() if name != "class"}
    return dict(value) if isinstance(value, dict) else value


@command("get", "name", "keys")
async def get(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    watcher = watcher_named(arbiter, props)
    keys = props["keys"]
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CommandError("'keys' isn't a list of strings")
    values = options_of(watcher, every=True)
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
    given = dict(changes)
    changes = parse_options(changes)
    check_owner(arbiter, changes, watcher.config)
    new = apply_options(watcher.config, changes, set(arbiter.sockets.sockets))
    if not any(watcher_option(key).reloads for key in changes):
        return Deferred(watcher.configure(new, reload=False, updated=len(changes), options=given))
    return replacing(
        lambda spawned: watcher.configure(
            new, reload=True, updated=len(changes), spawned=spawned, options=given
        ),
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
    given = parse_options(given)
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
