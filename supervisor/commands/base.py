"""What every control command shares: the registry, the error type, property checks.

A command is an async function ``(arbiter, properties) -> fields``. It checks
its properties first and raises `CommandError` for anything the client got
wrong; work that may take long (stopping processes) is returned as a
`Deferred`, which the dispatcher awaits only when the client asked for
``waiting``, as Circus does.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from chapiteau.protocol.circus_messages import MESSAGE_ERROR
from chapiteau.protocol.signals import SignalError, parse_signal
from chapiteau.protocol.words import TRUE_WORDS
from chapiteau.supervisor.watcher import ReloadError

if TYPE_CHECKING:
    from chapiteau.supervisor.config import Config, WatcherConfig
    from chapiteau.supervisor.endpoints.stats import ProcessSampler
    from chapiteau.supervisor.handover import Handover
    from chapiteau.supervisor.socket_pool import SocketPool
    from chapiteau.supervisor.watcher import Watcher

Fields = dict[str, Any]


class Supervisor(Protocol):
    """What the commands see of the arbiter. The arbiter implements it and passes
    itself to `chapiteau.supervisor.commands.dispatch`; no command imports it."""

    config: Config
    sockets: SocketPool
    watchers: dict[str, Watcher]
    """By lower-cased name."""
    sampler: ProcessSampler
    requests: Counter[tuple[str, str]]
    """Control requests answered, by (command, reply status): ``ok`` or ``error``."""
    handover: Handover | None
    """The snapshot the next supervisor adopts (None in connect mode)."""

    def by_priority(self) -> list[Watcher]: ...

    async def start_watchers(self, watchers: Iterable[Watcher], autostart_only: bool) -> None: ...

    async def stop_watchers(self, watchers: Iterable[Watcher]) -> None: ...

    async def reload_all(self, graceful: bool = True, sequential: bool = False) -> None: ...

    async def reload_config(self, planned: asyncio.Future[None] | None = None) -> None: ...

    async def quit(self, shutdown_broker: bool = False) -> None: ...

    async def upgrade(self) -> int: ...

    def add_watcher(self, config: WatcherConfig) -> Watcher: ...

    async def remove_watcher(
        self, watcher: Watcher, nostop: bool = False, announce: bool = True
    ) -> None: ...


class CommandError(Exception):
    """The client's request cannot be carried out; ``reason`` is the reply's text."""

    def __init__(self, reason: str, errno: int = MESSAGE_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


@dataclass
class Deferred:
    """Work that runs after the checks: awaited before replying only with ``waiting``."""

    work: Awaitable[Any]
    shape: Callable[[Any], Fields] = field(default=lambda result: {})
    """Turns the work's result into the reply's fields."""
    started: asyncio.Future[CommandError | None] | None = None
    """For work that replaces processes: set once the new processes run, or with the
    error if they cannot start. The reply waits for it even without ``waiting``."""


def replacing(
    work: Callable[[asyncio.Future[Any]], Awaitable[Any]],
    request: str,
    shape: Callable[[Any], Fields] = lambda result: {},
) -> Deferred:
    """A Deferred for a reload: ``work(spawned)`` sets ``spawned`` once the new processes
    run; a `ReloadError` becomes a CommandError that starts with ``request``
    (``"set web cmd"``), answered even to a client that does not wait.
    """
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def run() -> Any:
        try:
            return await work(started)
        except ReloadError as exc:
            error = CommandError(f"{request}: {exc}")
            if not started.done():
                started.set_result(error)
            raise error from None
        finally:
            if not started.done():
                started.set_result(None)

    return Deferred(run(), shape, started)


Handler = Callable[["Supervisor", dict[str, Any]], Awaitable["Fields | Deferred"]]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    required: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {}


def command(name: str, *required: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the command ``name`` with its required properties."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, handler, tuple(required))
        return handler

    return register


def watcher_named(arbiter: Supervisor, properties: dict[str, Any]) -> Watcher:
    """The watcher named by ``properties["name"]`` (ignoring case), or errno 3."""
    name = properties.get("name")
    if not isinstance(name, str):
        raise CommandError("message invalid 'name' is not a string")
    watcher = arbiter.watchers.get(name.lower())
    if watcher is None:
        raise CommandError(f"program {name} not found")
    return watcher


def matching_watchers(arbiter: Supervisor, properties: dict[str, Any]) -> list[Watcher]:
    """The watchers ``name`` matches under ``match`` (glob, regex or simple), by priority."""
    name = properties.get("name")
    if not isinstance(name, str):
        raise CommandError("message invalid 'name' is not a string")
    pattern = name.lower()
    match = properties.get("match", "glob")
    if match == "simple":
        found = [w for w in arbiter.by_priority() if w.name.lower() == pattern]
    elif match == "glob":
        found = [w for w in arbiter.by_priority() if fnmatch.fnmatchcase(w.name.lower(), pattern)]
    elif match == "regex":
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise CommandError(f"invalid regex {name!r}: {exc}") from None
        found = [w for w in arbiter.by_priority() if compiled.match(w.name.lower())]
    else:
        raise CommandError(f"invalid match {match!r}; use glob, regex or simple")
    if not found:
        raise CommandError(f"program {name} not found")
    return found


def int_property(properties: dict[str, Any], key: str, default: int | None = None) -> int | None:
    value = properties.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool):
        raise CommandError(f"{key!r} isn't an integer")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if not isinstance(value, int):
        raise CommandError(f"{key!r} isn't an integer")
    return value


def number_property(
    properties: dict[str, Any], key: str, default: float | None = None
) -> float | None:
    value = properties.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"{key!r} isn't a number")
    return float(value)


def bool_property(properties: dict[str, Any], key: str, default: bool) -> bool:
    """A flag of a command (``waiting``, ``graceful`` ...): a string is true when it is one
    of the true boolean words, anything else by its truth value."""
    value = properties.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() in TRUE_WORDS
    return bool(value)


def signal_property(properties: dict[str, Any], key: str) -> int | None:
    value = properties.get(key)
    if value is None:
        return None
    if not isinstance(value, int | str):
        raise CommandError("signal invalid")
    try:
        return parse_signal(value)
    except SignalError:
        raise CommandError("signal invalid") from None
