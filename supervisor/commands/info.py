"""Commands about the supervisor as a whole: stats, sockets, global options, quit, reload,
upgrade."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from chapiteau.supervisor.commands.base import (
    CommandError,
    Deferred,
    Fields,
    Supervisor,
    bool_property,
    command,
    int_property,
    watcher_named,
)

if TYPE_CHECKING:
    from chapiteau.supervisor.watcher import Watcher

GLOBAL_OPTIONS = (
    "endpoint",
    "stats_endpoint",
    "pubsub_endpoint",
    "check_delay",
    "multicast_endpoint",
)
NO_SUCH_PROCESS = "No such process (stopped?)"


def watcher_process_info(arbiter: Supervisor, watcher: Watcher, pid: int, extended: bool) -> Any:
    """Circus's per-process info (as in its stats), with ``started``, ``wid`` and children."""
    process = watcher.processes[pid]
    info = arbiter.sampler.sample(pid, children=True)
    if info is None:
        return NO_SUCH_PROCESS
    info["started"] = process.started
    info["wid"] = process.wid
    if extended:
        watcher.hooks.extended_stats(watcher, arbiter, pid=pid, stats=info)
    return info


def _process_infos(arbiter: Supervisor, watcher: Watcher, extended: bool) -> dict[str, Any]:
    return {
        str(pid): watcher_process_info(arbiter, watcher, pid, extended)
        for pid in sorted(watcher.processes)
    }


@command("stats")
async def stats(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    extended = bool_property(props, "extended", False)
    if props.get("name") is None:
        return {
            "infos": {
                watcher.name: _process_infos(arbiter, watcher, extended)
                for watcher in arbiter.watchers.values()
            }
        }
    watcher = watcher_named(arbiter, props)
    pid = int_property(props, "process")
    if pid is None:
        return {
            "name": props["name"],
            "info": _process_infos(arbiter, watcher, extended),
        }
    if pid not in watcher.processes:
        raise CommandError(f"process {pid!r} not found in {props['name']!r}")
    return {"process": pid, "info": watcher_process_info(arbiter, watcher, pid, extended)}


@command("dstats")
async def dstats(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    return {"info": arbiter.sampler.sample(os.getpid()) or NO_SUCH_PROCESS}


@command("listsockets")
async def listsockets(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    sockets = []
    for received in sorted(arbiter.sockets.sockets.values(), key=lambda s: s.fd):
        info = received.info
        entry: dict[str, Any] = {"fd": received.fd, "name": info.name, "backlog": info.backlog}
        if info.path is not None:
            entry["path"] = info.path
        else:
            entry["host"] = info.host
            entry["port"] = info.port
        sockets.append(entry)
    return {"sockets": sockets}


@command("globaloptions")
async def globaloptions(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    circus = arbiter.config.circus
    values = {key: getattr(circus, key) for key in GLOBAL_OPTIONS}
    option = props.get("option")
    if option is None:
        return {"options": values}
    if option not in values:
        raise CommandError(f"{option!r} not an existing option")
    return {"options": {option: values[option]}}


@command("ipython")
async def ipython(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    return {"shell": False, "msg": "no IPython kernel in chapiteau: the supervisor runs no shell"}


@command("listen")
async def listen(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    raise CommandError("invalid message. use a pub/sub socket")


@command("quit")
async def quit_(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    return Deferred(arbiter.quit(shutdown_broker=True))


@command("upgrade")
async def upgrade(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    """chapiteau's own: hand the workers over to the installed supervisor code (same pids);
    the reply comes once that code passed its check, with this supervisor's pid."""
    return {"pid": await arbiter.upgrade()}


@command("reloadconfig")
async def reloadconfig(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    """A file that cannot be loaded is the reply's error; the switch may run after it."""
    loop = asyncio.get_running_loop()
    planned: asyncio.Future[None] = loop.create_future()
    work = loop.create_task(arbiter.reload_config(planned))
    await asyncio.wait([work, planned], return_when=asyncio.FIRST_COMPLETED)
    if not planned.done():
        await work  # raises why the reload could not be planned
    return Deferred(work)
