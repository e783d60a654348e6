"""Commands that act on the processes of watchers: start, stop, signal, count them."""

from __future__ import annotations

import os
from typing import Any

import structlog

from chapiteau.supervisor.children import process_tree
from chapiteau.supervisor.commands.base import (
    CommandError,
    Deferred,
    Fields,
    Supervisor,
    bool_property,
    command,
    int_property,
    matching_watchers,
    number_property,
    replacing,
    signal_property,
    watcher_named,
)

log = structlog.get_logger("chapiteau.supervisor")


@command("start")
async def start(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    if props.get("name") is None:
        return Deferred(arbiter.start_watchers(arbiter.by_priority(), autostart_only=True))
    watchers = matching_watchers(arbiter, props)
    if len(watchers) == 1:
        return Deferred(watchers[0].start(), lambda info: {"info": info})
    return Deferred(arbiter.start_watchers(watchers, autostart_only=True))


@command("stop")
async def stop(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    if props.get("name") is None:
        return Deferred(arbiter.stop_watchers(arbiter.by_priority()))
    watchers = matching_watchers(arbiter, props)
    if len(watchers) == 1:
        return Deferred(watchers[0].stop(), lambda _: {"info": None})
    return Deferred(arbiter.stop_watchers(watchers))


@command("restart")
async def restart(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    if props.get("name") is None:
        watchers = arbiter.by_priority()
    else:
        watchers = matching_watchers(arbiter, props)
        if len(watchers) == 1:
            return Deferred(watchers[0].restart(), lambda info: {"info": info})
    return Deferred(_restart_all(arbiter, watchers))


async def _restart_all(arbiter: Supervisor, watchers: list) -> None:
    await arbiter.stop_watchers(watchers)
    await arbiter.start_watchers(watchers, autostart_only=True)


@command("reload")
async def reload(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    graceful = bool_property(props, "graceful", True)
    sequential = bool_property(props, "sequential", False)
    if props.get("name") is None:
        return Deferred(arbiter.reload_all(graceful=graceful, sequential=sequential))
    watcher = watcher_named(arbiter, props)
    return replacing(
        lambda spawned: watcher.reload(graceful, sequential, spawned),
        f"reload {watcher.name}",
        lambda info: {"info": info},
    )


@command("incr", "name")
async def incr(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    return _change_count(arbiter, props, +1)


@command("decr", "name")
async def decr(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    return _change_count(arbiter, props, -1)


def _change_count(arbiter: Supervisor, props: dict[str, Any], sign: int) -> Fields | Deferred:
    watcher = watcher_named(arbiter, props)
    nb = int_property(props, "nb", 1)
    assert nb is not None
    if watcher.config.singleton:
        return {"numprocesses": watcher.config.numprocesses, "singleton": True}
    return Deferred(watcher.change_numprocesses(sign * nb), lambda n: {"numprocesses": n})


@command("kill", "name")
async def kill(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    watcher = watcher_named(arbiter, props)
    pid = int_property(props, "pid")
    signum = signal_property(props, "signum")
    timeout = number_property(props, "graceful_timeout")
    if pid is not None and pid not in watcher.processes:
        raise CommandError(f"process {pid} not found in {watcher.name!r}")
    return Deferred(watcher.kill(pid, signum, timeout))


@command("signal", "name", "signum")
async def send_signal(arbiter: Supervisor, props: dict[str, Any]) -> Fields | Deferred:
    watcher = watcher_named(arbiter, props)
    signum = signal_property(props, "signum")
    assert signum is not None
    pid = int_property(props, "pid")
    childpid = int_property(props, "childpid")
    children = bool_property(props, "children", False)
    recursive = bool_property(props, "recursive", False)
    if childpid is not None and pid is None:
        raise CommandError("message invalid 'pid' is missing: childpid needs the parent's pid")
    pids = [pid] if pid is not None else sorted(watcher.processes)
    for target in pids:
        if target not in watcher.processes:
            log.info("signal_unknown_pid", watcher=watcher.name, pid=target)
            continue
        if childpid is not None:
            if childpid not in process_tree.children(target):
                raise CommandError(f"process {childpid} is not a child of {target}")
            _kill(childpid, signum)
        elif children:
            for child in process_tree.children(target):
                _kill(child, signum)
        else:
            descendants = process_tree.descendants(target) if recursive else []
            watcher.send_signal(signum, target)
            for child in descendants:
                _kill(child, signum)
    return {}


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        log.info("signal_process_gone", pid=pid)


@command("numprocesses")
async def numprocesses(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    if props.get("name") is None:
        return {"numprocesses": sum(len(w.processes) for w in arbiter.watchers.values())}
    watcher = watcher_named(arbiter, props)
    return {"numprocesses": len(watcher.processes), "watcher_name": props["name"]}


@command("numwatchers")
async def numwatchers(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    return {"numwatchers": len(arbiter.watchers)}


@command("list")
async def list_(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    if props.get("name") is None:
        return {"watchers": sorted(arbiter.watchers)}
    return {"pids": sorted(watcher_named(arbiter, props).processes)}


@command("status")
async def status(arbiter: Supervisor, props: dict[str, Any]) -> Fields:
    """Circus's status words; with ``verbose`` (chapiteau's), the lifecycle's phase too
    (waiting_on_demand, backing_off with retry_at, failed with its reason) and the
    processes by wid (pid, state, uptime, restarts, last exit)."""
    verbose = bool_property(props, "verbose", False)
    if props.get("name") is None:
        watchers = arbiter.watchers.values()
        fields: Fields = {"statuses": {w.name: w.state for w in watchers}}
        if verbose:
            fields["states"] = {w.name: w.status() for w in watchers}
        return fields
    watcher = watcher_named(arbiter, props)
    if verbose:
        return {"status": watcher.state, "name": watcher.name, "state": watcher.status()}
    return {"status": watcher.state}
