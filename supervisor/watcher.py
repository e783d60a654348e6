"""The asyncio driver of one watcher: it carries out what its lifecycle decides.

The decisions (which phase, respawn now or after a backoff, give up, what a
reload replaces, when max_age expires) are all in `chapiteau.supervisor.lifecycle`,
a pure state machine; read it first. This module feeds it events (a spawn ran
or failed, a process exited, a timer fired, a client connected, a command) with
the loop's time, and carries out the actions it returns: fork and exec through
`chapiteau.supervisor.children.spawn`, signals and the graceful stop of a
process tree, timers with ``loop.call_at``, the hooks and the events.

Every operation that changes the process set (start, stop, restart, reload,
incr/decr, respawn, max_age) runs under the watcher's own lock, so operations
on one watcher queue in order while different watchers proceed concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from chapiteau.protocol.options import RLIMITS
from chapiteau.supervisor.children.child_exit import ChildWatcher
from chapiteau.supervisor.children.process_tree import OrphanSearch, ProcessTree
from chapiteau.supervisor.children.spawn import SpawnError, SpawnSpec, spawn
from chapiteau.supervisor.config import Flapping, WatcherConfig, worker_env
from chapiteau.supervisor.events import Events, own_topic
from chapiteau.supervisor.handover import Handover, Pipe, local_pipe, markers
from chapiteau.supervisor.hooks import Hooks
from chapiteau.supervisor.io.redirector import Redirector
from chapiteau.supervisor.io.streams import build_stream, close_stream, reopen_stream
from chapiteau.supervisor.io.worker_log import WorkerOutputLog
from chapiteau.supervisor.lifecycle import (
    Action,
    ArmExpiry,
    ArmRespawn,
    ArmTimer,
    CancelRespawn,
    CancelTimer,
    Halt,
    Lifecycle,
    Phase,
    Publish,
    Readiness,
    Reconcile,
    Replace,
    SignalProcesses,
    Start,
    StartOnDemand,
    StopFailed,
    StopProcesses,
    Timer,
    UnwatchSockets,
    WatchSockets,
)
from chapiteau.supervisor.process import Process
from chapiteau.supervisor.socket_pool import SocketPool
from chapiteau.supervisor.state import ProcessRecord, WatcherRecord, encode_process
from chapiteau.supervisor.substitution import format_args

log = structlog.get_logger("chapiteau.supervisor")

KILL_WAIT = 10.0
"""How long to wait for a SIGKILLed process to be reaped before giving up on it."""
EVENT_LOG_LEVELS = {
    "crash_loop_backoff": "warning",
    "ready_timeout": "warning",
    "watchdog_timeout": "warning",
    "ready": "info",
    "not_ready": "info",
    "status": "debug",
}
"""How the lifecycle's events are logged; those not listed are errors."""


class ReloadError(Exception):
    """A reload could not start its new processes; the old ones keep serving."""


class NotStarted(Exception):
    """A process could not be spawned, or a hook refused it; str() says why."""


class HookRefused(NotStarted):
    """``before_spawn`` or ``after_spawn`` returned false (a start or respawn then stops
    the watcher; a reload keeps the old processes)."""


@dataclass
class Runtime:
    """What every watcher shares with the arbiter."""

    loop: asyncio.AbstractEventLoop
    children: ChildWatcher
    sockets: SocketPool
    redirector: Redirector
    events: Events
    arbiter: Any
    orphans: OrphanSearch
    """Finds the members of an exited worker's process group among the supervisor's
    children (workers aside: it holds the arbiter's index of every live worker)."""
    adopt: Callable[[int, Watcher, int | None], None]
    """The arbiter's: index a worker's pid and watch for its exit (given a pidfd: a worker
    of the previous supervisor generation, not our child)."""
    notify_socket: Callable[[], str]
    """The arbiter's: the address of the supervisor's NOTIFY_SOCKET (opened at first use)."""
    flapping: Flapping
    """The configuration's crash-loop policy (reloadconfig replaces it)."""
    handover: Handover | None = None
    """Spawn mode: holds the output pipes and the snapshot for the next supervisor."""


class Watcher:
    """Keeps ``numprocesses`` processes of one command alive."""

    def __init__(self, config: WatcherConfig, runtime: Runtime) -> None:
        self.lifecycle = Lifecycle(config)
        self.name = config.name
        self.runtime = runtime
        self.processes: dict[int, Process] = {}
        self.lock = asyncio.Lock()
        self.hooks = Hooks(config.name, config.hooks, self._publish_hook, _pythonpath(config))
        self.stdout_stream = _stream(config, "stdout")
        self.stderr_stream = _stream(config, "stderr")
        self._output_log = WorkerOutputLog(config.name)
        """Where output goes when no stream is configured: the supervisor's log."""
        self._respawn_timer: asyncio.TimerHandle | None = None
        self._watched_fds: list[int] = []
        self._announced = Phase.STOPPED
        """Spawned processes not in a snapshot yet: their start time is read when one is
        written (see `record`)."""
        self._log = log.bind(watcher=config.name)
        self.overrides: dict[str, Any] = {}
        """Options as ``set``, ``incr`` and ``decr`` changed them since the config was
        read: the next supervisor generation applies them again."""

    @property
    def config(self) -> WatcherConfig:
        return self.lifecycle.config

    @config.setter
    def config(self, config: WatcherConfig) -> None:
        self.lifecycle.config = config

    @property
    def state(self) -> str:
        """Circus's word for the phase: stopped, starting, active or stopping."""
        return self.lifecycle.phase.circus_status

    def describe(self) -> dict[str, Any]:
        """The lifecycle's phase (``status`` with ``verbose``, the ``state`` event)."""
        return self.lifecycle.describe(self._now())

    def status(self) -> dict[str, Any]:
        """``status`` verbose: the phase, ``retry_at`` (epoch) when backing off, and one
        entry per wid with its process's ``started`` time (epoch), ``ready`` and ``status``
        (its last ``STATUS=``)."""
        now, wall = self._now(), time.time()
        described = self.lifecycle.describe(now)
        retry_at = self.lifecycle.retry_at
        if described["state"] == Phase.BACKING_OFF.value and retry_at is not None:
            described["retry_at"] = round(wall + max(0.0, retry_at - now), 3)
        processes = self.lifecycle.processes(now)
        for entry in processes:
            process = self.processes.get(entry["pid"])
            entry["started"] = process.started if process else None
        described["processes"] = processes
        return described

    # -- commands (each takes the lock) --------------------------------------

    async def start(self) -> dict[str, list[int]]:
        """Start the processes (or top them up); report started and kept pids."""
        async with self.lock:
            kept = sorted(self.processes)
            await self._start()
            return {"started": sorted(set(self.processes) - set(kept)), "kept": kept}

    async def stop(self) -> None:
        """Stop the processes; a start under way spawns nothing more from now on, and a
        reload that waits for a new process to be ready waits no more."""
        self.lifecycle.stop_pending = True
        for process in self.processes.values():
            process.resolve_ready("the watcher is stopping")
        try:
            async with self.lock:
                await self._stop()
        finally:
            self.lifecycle.stop_pending = False

    async def restart(self) -> dict[str, list[int]]:
        async with self.lock:
            stopped = sorted(self.processes)
            await self._stop()
            await self._start()
            return {"stopped": stopped, "started": sorted(self.processes), "kept": []}

    async def reload(
        self,
        graceful: bool = True,
        sequential: bool = False,
        spawned: asyncio.Future[Any] | None = None,
    ) -> dict[str, list[int]]:
        """Replace every process: new ones first, then the old ones stop (Circus ``reload``).

        If a new process cannot start, the old ones keep serving and `ReloadError`
        says why (see `Lifecycle.reload`). ``spawned`` gets its result once the
        new processes run, before the old ones are stopped (with ``sequential``,
        once the first one runs; for a start or a restart, at once).
        """
        if not graceful:
            _resolve(spawned)
            return await self.restart()
        async with self.lock:
            old = set(self.processes)
            planned = self.lifecycle.reload(sequential)
            if any(isinstance(action, SignalProcesses) for action in planned):
                # Circus sends the reload SIGHUP to the worker alone, bypassing the hooks.
                self._effects(planned)
                return {"stopped": [], "started": [], "kept": sorted(self.processes)}
            try:
                await self._reload(self._effects(planned), spawned)
            except NotStarted as exc:
                message, after = self.lifecycle.reload_failed(str(exc), len(old), self._now())
                self._log.error("reload_failed", error=str(exc), serving=len(self.processes))
                await self._perform(after)
                raise ReloadError(message) from None
            self._publish("reload")
            return {
                "stopped": sorted(old - set(self.processes)),
                "started": sorted(set(self.processes) - old),
                "kept": [],
            }

    async def _reload(self, actions: list[Action], spawned: asyncio.Future[Any] | None) -> None:
        """Carry out a reload's actions, ``warmup_delay`` between two batches of replacements
        (as between two spawns)."""
        first = True
        for action in actions:
            if isinstance(action, Replace):
                if not first:
                    await self._warmup()
                first = False
                await self._replace(action, lambda: _resolve(spawned))
            else:
                _resolve(spawned)
                await self._perform_one(action)

    async def set_numprocesses(self, count: int) -> int:
        """Change the target count and spawn or stop (the oldest) to reach it."""
        return await self._resize(lambda _: count)

    async def change_numprocesses(self, delta: int) -> int:
        """incr/decr: move the target count by ``delta`` (not below 0) and reach it."""
        count = await self._resize(lambda current: current + delta)
        self.overrides["numprocesses"] = count
        self.changed()
        return count

    async def _resize(self, new_count: Callable[[int], int]) -> int:
        """Set the target count to ``new_count(current count)``, not below 0, and reach it."""
        async with self.lock:
            await self._perform(self.lifecycle.resize(new_count(self.config.numprocesses)))
            return self.config.numprocesses

    def configure(
        self,
        config: WatcherConfig,
        reload: bool,
        updated: int = 1,
        spawned: asyncio.Future[Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Awaitable[None]:
        """The ``set`` command: load ``config``'s hooks and streams now (errors raise here),
        and return the work that switches to it, reloading when only new processes can
        take the change; one ``updated`` event per changed key, as Circus. If the reload
        cannot start the new processes, the watcher goes back to its previous
        configuration and `ReloadError` is raised (``spawned``: see `reload`). ``options``:
        the ``set`` request's, kept for the next supervisor generation once applied.
        """
        hooks_changed = config.hooks != self.config.hooks
        if hooks_changed:
            self.hooks.reload(config.hooks)
        streams = {
            name: _stream(config, name)
            for name in ("stdout", "stderr")
            if getattr(config, f"{name}_stream") != getattr(self.config, f"{name}_stream")
        }
        work = self._configure(config, reload or bool(streams), streams, updated, spawned)
        return work if options is None else self._remember(work, options)

    async def _remember(self, work: Awaitable[None], options: Mapping[str, Any]) -> None:
        await work
        self.overrides.update(options)
        self.changed()

    async def _configure(
        self,
        config: WatcherConfig,
        reload: bool,
        streams: dict[str, Any],
        updated: int,
        spawned: asyncio.Future[Any] | None,
    ) -> None:
        async with self.lock:
            previous = self.config
            old_streams = self._switch(config, streams)
            for _ in range(updated):
                self._publish("updated")
            if self.lifecycle.serving and not reload:
                await self._reconcile()
        if reload and self.state != "stopped":
            try:
                await self.reload(spawned=spawned)
            except ReloadError as exc:
                async with self.lock:
                    self._switch(previous, old_streams)
                    if self.lifecycle.serving:
                        await self._reconcile()
                _close_streams(streams.values())
                raise ReloadError(f"{exc}, with the previous settings") from None
        _close_streams(old_streams.values())

    def _switch(self, config: WatcherConfig, streams: dict[str, Any]) -> dict[str, Any]:
        """Use ``config`` and ``streams``; return the streams replaced."""
        old_streams = {name: getattr(self, f"{name}_stream") for name in streams}
        for name, stream in streams.items():
            setattr(self, f"{name}_stream", stream)
        self.config = config
        return old_streams

    async def kill(
        self, pid: int | None = None, signum: int | None = None, timeout: float | None = None
    ) -> None:
        """Stop one or every process gracefully, then spawn their replacements."""
        targets = [self.processes[pid]] if pid in self.processes else []
        if pid is None:
            targets = list(self.processes.values())
        await asyncio.gather(*(self._kill(p, signum, timeout) for p in targets))
        async with self.lock:
            if self.lifecycle.serving:
                await self._reconcile()

    def send_signal(self, signum: int, pid: int | None = None) -> None:
        for process in [self.processes[pid]] if pid in self.processes else self.processes.values():
            self._signal(process, signum)

    # -- carrying out the lifecycle's actions -----------------------------------

    def _now(self) -> float:
        return self.runtime.loop.time()

    def _effects(self, actions: list[Action]) -> list[Action]:
        """Carry out the actions that take no time; return those to await under the lock."""
        later: list[Action] = []
        for action in actions:
            if isinstance(action, Publish):
                level = EVENT_LOG_LEVELS.get(action.event, "error")
                getattr(self._log, level)(action.event, **action.payload)
                self._publish_own(action.event, action.payload)
            elif isinstance(action, ArmRespawn | CancelRespawn):
                self._set_respawn_timer(action.at if isinstance(action, ArmRespawn) else None)
            elif isinstance(action, ArmExpiry):
                self._arm_expiry(action.pid, action.at)
            elif isinstance(action, ArmTimer | CancelTimer | Readiness | StopFailed):
                self._readiness_effect(action)
            elif isinstance(action, WatchSockets | UnwatchSockets):
                self._watch_sockets(isinstance(action, WatchSockets))
            elif isinstance(action, SignalProcesses):
                for pid in action.pids:
                    self.runtime.children.send_signal(pid, action.signum)
            else:
                later.append(action)
        self._announce()
        return later

    async def _perform(self, actions: list[Action]) -> None:
        """Carry out ``actions`` (the caller holds the lock)."""
        for action in self._effects(actions):
            await self._perform_one(action)

    async def _perform_one(self, action: Action) -> None:
        if isinstance(action, Reconcile):
            await self._reconcile()
        elif isinstance(action, StopProcesses):
            await self._kill_all(action.pids)
        elif isinstance(action, Halt):
            if action.reason is not None:
                self._log.error("watcher_stopped_on_failure", reason=action.reason)
            await self._stop()
        elif isinstance(action, Start):
            await self._start()
        elif isinstance(action, StartOnDemand):
            self._log.info("on_demand_triggered")
            await self._start(demanded=True)
        elif isinstance(action, Replace):
            await self._replace(action)

    def _soon(self, actions: list[Action]) -> None:
        """From a callback: the quick actions now, the others in a task under the lock."""
        later = self._effects(actions)
        if later:
            self.runtime.loop.create_task(self._locked(lambda: later))

    async def _locked(self, event: Callable[[], list[Action]]) -> None:
        """Feed ``event`` to the lifecycle under the lock, and carry out its actions."""
        async with self.lock:
            await self._perform(event())

    def _announce(self) -> None:
        """Log a ``watcher_state`` line when the phase changed (no event: Circus clients
        listening to every topic expect Circus's events in Circus's order)."""
        if self.lifecycle.phase is not self._announced:
            self._announced = self.lifecycle.phase
            self._log.info("watcher_state", **self.describe())
            self.changed()

    def changed(self) -> None:
        """Something the next supervisor generation must know changed: snapshot it soon."""
        if self.runtime.handover is not None:
            self.runtime.handover.changed()

    def record(self) -> tuple[WatcherRecord, list[bytes]]:
        """This watcher in the snapshot for the next generation, and its processes' parts."""
        lifecycle = self.lifecycle
        record = WatcherRecord(
            name=self.name,
            phase=lifecycle.phase.value,
            overrides=self.overrides,
            stop_signal=self.config.stop_signal,
            graceful_timeout=self.config.graceful_timeout,
            spawns={wid: slot.spawns for wid, slot in lifecycle.slots.items()},
            restarts=lifecycle.restarts,
        )
        return record, [process.snapshot_part() for process in self.processes.values()]

    def adopt(
        self, record: ProcessRecord, pidfd: int, pipes: dict[str, int], spawns: int = 1
    ) -> None:
        """Manage again a process of the previous supervisor generation (a lifecycle event:
        the slot is filled by a running pid, nothing is spawned); ``pipes`` are its output
        pipes' read ends by broker key (those it uses are taken), ``spawns`` its slot's
        count of spawns."""
        steered = self.runtime.sockets.doors
        loop = self.runtime.loop
        process = Process(
            record.pid,
            record.wid,
            loop.create_future(),
            loop.create_future(),
            started=record.started,
            held=record.keys,
            record=encode_process(record),
            doors={steered[name]: slot for name, slot in record.doors.items() if name in steered},
        )
        self.processes[record.pid] = process
        self.runtime.adopt(record.pid, self, pidfd)
        for name, key in (("stdout", record.stdout), ("stderr", record.stderr)):
            if key in pipes:
                stream = self._output_stream(name) or self._output_log
                self.runtime.redirector.add(pipes.pop(key), record.pid, name, stream)
        born = self._now() - max(0.0, time.time() - record.started)
        self._effects(self.lifecycle.adopted(record.pid, record.wid, born, spawns, self._now()))
        self._log.info("process_adopted", pid=record.pid, wid=record.wid)

    # -- the life of the processes --------------------------------------------

    async def _start(self, demanded: bool = False) -> None:
        was = self.lifecycle.phase
        has_sockets = bool(self.runtime.sockets.names_for(self.config))
        actions = self.lifecycle.start(demanded, has_sockets)
        if self.lifecycle.phase is not Phase.STARTING or was is Phase.STARTING:
            await self._perform(actions)
            return
        if not self._hook("before_start"):
            self.lifecycle.start_refused()
            self._announce()
            self._log.warning("watcher_start_refused", hook="before_start")
            return
        await self._perform(actions)
        if not self.lifecycle.keeps_count:
            return
        self.lifecycle.started()
        self._announce()
        self._log.info("watcher_started", processes=len(self.processes))
        self._publish("start")
        if not self._hook("after_start"):
            await self._stop()

    async def _stop(self) -> None:
        actions = self.lifecycle.stop()
        if self.lifecycle.phase is not Phase.STOPPING:
            await self._perform(actions)
            return
        self._hook("before_stop")
        await self._perform(actions)
        self.lifecycle.stopped()
        self._announce()
        self._log.info("watcher_stopped")
        self._publish("stop")
        self._hook("after_stop")

    def _watch_sockets(self, watch: bool) -> None:
        """on_demand: start at the first connection to one of this watcher's sockets.

        Only this watcher starts, whatever its place in the start order, and a
        stopped watcher stays stopped: Circus starts every autostart watcher on
        a connection to any socket, and this one only if it comes first.
        The loop watches the listening sockets only while the watcher
        waits; the client stays in the accept queue until a worker accepts it.
        """
        for fd in self._watched_fds:
            self.runtime.loop.remove_reader(fd)
        self._watched_fds = self.runtime.sockets.fds_of(self.config) if watch else []
        for fd in self._watched_fds:
            self.runtime.loop.add_reader(fd, self._soon_connection)
        if watch:
            names = list(self.runtime.sockets.names_for(self.config))
            self._log.info("on_demand_waiting", sockets=names)

    def _soon_connection(self) -> None:
        self._soon(self.lifecycle.connection())

    async def _reconcile(self) -> None:
        """Spawn the missing processes, or stop the oldest extra ones."""
        await self._kill_all(self.lifecycle.extra())
        # As many spawns as are missing now: exits seen meanwhile are the next round's.
        for left in range(self.lifecycle.missing(), 0, -1):
            if not self.lifecycle.keeps_count or await self._spawn_one() is None:
                return
            if left > 1:
                await self._warmup()

    async def _warmup(self) -> None:
        """Wait ``warmup_delay`` before the next spawn; without one, still let the loop
        run once, so that a stop, a command or an exit is seen between two spawns
        (a start of thousands of processes would hold the loop for seconds)."""
        await asyncio.sleep(max(0.0, self.config.warmup_delay))

    async def _spawn_one(self) -> Process | None:
        """Spawn one process; after a failure the lifecycle retries later or stops.

        The retry waits on a timer, not under the lock, so that a watcher whose
        command cannot start never blocks stop, other commands, or the start
        of the watchers after it (Circus issue #1157).
        """
        try:
            return await self._try_spawn()
        except HookRefused as exc:
            await self._perform(self.lifecycle.spawn_refused(str(exc)))
        except NotStarted as exc:
            await self._perform(self.lifecycle.respawn_failed(self._now(), str(exc)))
        return None

    async def _try_spawn(self) -> Process:
        """Spawn one process through its hooks; raise NotStarted if it does not run."""
        if not self._hook("before_spawn"):
            raise HookRefused("before_spawn hook refused the spawn")
        try:
            process = self._spawn()
        except (SpawnError, OSError, ValueError) as exc:
            self._effects(self.lifecycle.spawn_failed(str(exc), getattr(exc, "errno", None)))
            raise NotStarted(str(exc)) from exc
        if not self._hook("after_spawn", pid=process.pid):
            await self._kill(process)
            raise HookRefused("after_spawn hook refused the process")
        return process

    def _output_stream(self, name: str) -> Any:
        """The stream of the worker's fd 1 or 2; None when it goes to /dev/null."""
        if getattr(self.config, f"close_child_{name}"):
            return None
        return getattr(self, f"{name}_stream") or self._output_log

    def _spawn(self) -> Process:
        """Fork and exec one process now, and start watching it."""
        config = self.config
        wid = self.lifecycle.next_wid()
        plan = self.runtime.sockets.plan(config)
        streams = {name: self._output_stream(name) for name in ("stdout", "stderr")}
        pipes = self._pipes([name for name, stream in streams.items() if stream])
        stdout, stderr = pipes.get("stdout"), pipes.get("stderr")
        steered = self.runtime.sockets.doors
        kept = {steered[name]: fd for name, fd in plan.siblings.items() if name in steered}
        try:
            pid = spawn(_spec(config, wid, plan, stdout, stderr, self._notify_env()))
        except BaseException:
            for read, _, _ in pipes.values():
                os.close(read)
            self._release(key for _, _, key in pipes.values() if key is not None)
            kept = {}
            raise
        finally:
            for fd in plan.siblings.values():
                if fd not in kept.values():
                    os.close(fd)
            for _, write, _ in pipes.values():
                os.close(write)
        keys = {name: key for name, (_, _, key) in pipes.items() if key is not None}
        loop = self.runtime.loop
        process = Process(
            pid,
            wid,
            loop.create_future(),
            loop.create_future(),
            held=tuple(keys.values()),
            siblings=kept,
        )
        process.unrecorded = ProcessRecord(
            pid, wid, process.started, 0, keys.get("stdout"), keys.get("stderr")
        )
        self.processes[pid] = process
        self.runtime.adopt(pid, self, None)
        for name, (read, _, _) in pipes.items():
            self.runtime.redirector.add(read, pid, name, streams[name])
        jitter = random.randint(0, max(0, config.max_age_variance))
        self._effects(self.lifecycle.spawned(pid, wid, self._now(), jitter))
        self._log.info("process_spawned", pid=pid, wid=wid)
        self.changed()
        self._publish("spawn", {"process_pid": pid, "time": process.started})
        return process

    @property
    def notified_workers(self) -> bool:
        """Whether its workers get NOTIFY_SOCKET (``readiness = notify`` or a watchdog)."""
        return self.config.readiness == "notify" or self.config.watchdog_sec > 0

    def _notify_env(self) -> dict[str, str]:
        """NOTIFY_SOCKET and WATCHDOG_USEC for a watcher that tracks them; else nothing, so
        that the environment is Circus's."""
        env = {}
        if self.notified_workers:
            env["NOTIFY_SOCKET"] = self.runtime.notify_socket()
        if self.config.watchdog_sec > 0:
            env["WATCHDOG_USEC"] = str(round(self.config.watchdog_sec * 1_000_000))
        return env

    def process_exited(self, pid: int, code: int | None) -> None:
        """The child watcher saw ``pid`` exit: forget it, report it, replace it if needed.
        ``code`` is None for an adopted process: the broker reaped it."""
        process = self.processes.pop(pid, None)
        if process is None:
            return
        process.cancel_timers()
        process.resolve_ready(f"process {pid} exited with code {code} before it was ready")
        self._close_doors(process)
        self.runtime.redirector.remove_pid(pid)
        self._release(process.held)
        self.changed()
        if not process.exited.done():
            process.exited.set_result(code)
        now = time.time()
        self._hook("before_reap", process_pid=pid, time=now)
        self._log.info("process_reaped", pid=pid, wid=process.wid, exit_code=code)
        self._publish("reap", {"process_pid": pid, "time": now, "exit_code": code})
        self._hook("after_reap", process_pid=pid, time=now, exit_code=code, process_status=None)
        self._soon(self.lifecycle.exited(pid, self._now(), self.runtime.flapping, code))

    def _pipes(self, names: list[str]) -> dict[str, Pipe]:
        """The output pipes of a new process, by stream name: held by the broker in spawn
        mode, so that the process outlives this supervisor."""
        if not names:
            return {}
        if self.runtime.handover is None:
            return {name: local_pipe() for name in names}
        return self.runtime.handover.pipes(names)

    def _release(self, keys: Iterable[str]) -> None:
        """The broker may close these pipes: their process is gone, or never ran."""
        if self.runtime.handover is not None:
            self.runtime.handover.release(keys)

    def _set_respawn_timer(self, at: float | None) -> None:
        if self._respawn_timer is not None:
            self._respawn_timer.cancel()
            self._respawn_timer = None
        if at is not None:
            self._respawn_timer = self.runtime.loop.call_at(at, self._respawn_due)

    def _respawn_due(self) -> None:
        self._respawn_timer = None
        self.runtime.loop.create_task(self._locked(self.lifecycle.timer_fired))

    # -- readiness (see the lifecycle's docstring) ---------------------------------

    def notified(self, pid: int, fields: Mapping[str, str]) -> None:
        """An sd_notify message of ``pid``'s tree reached the supervisor's NOTIFY_SOCKET."""
        self._soon(self.lifecycle.notified(pid, fields, self._now()))

    def _readiness_effect(self, action: ArmTimer | CancelTimer | Readiness | StopFailed) -> None:
        process = self.processes.get(action.pid)
        if process is None:
            return
        if isinstance(action, Readiness):
            process.resolve_ready(action.why_not)
            if action.why_not is None:
                self._open_doors(process)
        elif isinstance(action, StopFailed):
            process.cancel_timers()
            process.failed_stop = self.runtime.loop.create_task(self._stop_tree(process))
        else:
            handle = process.timers.pop(action.timer, None)
            if handle is not None:
                handle.cancel()
            if isinstance(action, ArmTimer):
                process.timers[action.timer] = self.runtime.loop.call_at(
                    action.at, self._timer_expired, action.pid, action.timer
                )

    def _timer_expired(self, pid: int, timer: Timer) -> None:
        process = self.processes.get(pid)
        if process is not None:
            process.timers.pop(timer, None)
        self._soon(self.lifecycle.timer_expired(pid, timer, self._now()))

    def _arm_expiry(self, pid: int, at: float) -> None:
        process = self.processes.get(pid)
        if process is not None:
            process.max_age_timer = self.runtime.loop.call_at(
                at, lambda: self.runtime.loop.create_task(self._expire(pid))
            )

    async def _expire(self, pid: int) -> None:
        """max_age: the replacement starts before the old process stops, so capacity never dips
        (a singleton, which must never run twice, stops first)."""
        async with self.lock:
            for action in self._effects(self.lifecycle.expired(pid)):
                assert isinstance(action, Replace)
                try:
                    await self._replace(action)
                except HookRefused as exc:
                    await self._perform(self.lifecycle.spawn_refused(str(exc)))
                except NotStarted as exc:
                    # Without its replacement the old process serves on, and expires again later.
                    self._log.error("max_age_replacement_failed", pid=pid, error=str(exc))
                    jitter = random.randint(0, max(0, self.config.max_age_variance))
                    await self._perform(
                        self.lifecycle.replacement_failed(action.old, self._now(), jitter, str(exc))
                    )

    async def _replace(self, action: Replace, running: Callable[[], None] = lambda: None) -> None:
        """Spawn ``action.count`` processes, then stop ``action.old`` (or stop first, for a
        singleton). Raise NotStarted if one cannot start: the new ones stop again."""
        if action.stop_first:
            await self._kill_all(action.old)
        new: list[Process] = []
        try:
            for _ in range(action.count):
                if new:
                    await self._warmup()
                new.append(await self._try_spawn())
            for process in new:
                why_not = await process.ready
                if why_not is not None:
                    raise NotStarted(why_not)
        except NotStarted:
            await asyncio.gather(*(self._kill(process) for process in new))
            raise
        running()
        await self._kill_all(action.old)

    async def _kill_all(self, pids: Iterable[int]) -> None:
        targets = [self.processes[pid] for pid in pids if pid in self.processes]
        await asyncio.gather(*(self._kill(process) for process in targets))

    async def _kill(
        self, process: Process, signum: int | None = None, timeout: float | None = None
    ) -> None:
        """Stop the worker's whole tree: a signal, graceful_timeout, then SIGKILL to what is left.

        The tree is the worker's process group plus every descendant that left
        it (setsid), so nothing the worker started outlives it; Circus orphans
        them.
        """
        self.lifecycle.stopping_one(process.pid)
        process.cancel_timers()
        if process.failed_stop is not None:
            await asyncio.shield(process.failed_stop)
            return
        await self._stop_tree(process, signum, timeout)

    async def _stop_tree(
        self, process: Process, signum: int | None = None, timeout: float | None = None
    ) -> None:
        """`_kill` without telling the lifecycle: the exit is whatever it decided."""
        loop = self.runtime.loop
        grace = self.config.graceful_timeout if timeout is None else timeout
        tree = ProcessTree(process.pid, self.runtime.orphans)
        try:
            signum = self.config.stop_signal if signum is None else signum
            if self._close_doors(process):
                process.record_doors()
                self.changed()
                if signum != signal.SIGKILL:
                    # It finishes what it accepted before it hears of the stop.
                    await asyncio.sleep(self.config.drain_delay)
            await tree.refresh(leader_alive=not process.exited.done())
            self._signal(process, signum, tree)
            if await _tree_gone(process, tree, loop.time() + grace):
                return
            self._log.warning(
                "process_kill_escalated", pid=process.pid, after=grace, left=tree.alive()
            )
            self._publish("kill", {"process_pid": process.pid, "time": time.time()})
            leader_alive = not process.exited.done()
            await tree.refresh(leader_alive)
            tree.signal(signal.SIGKILL, leader_alive)
            await _tree_gone(process, tree, loop.time() + KILL_WAIT)
        finally:
            tree.close()

    def _open_doors(self, process: Process) -> None:
        """A ready process: new connections of its ``so_reuseport`` sockets may go to it."""
        for doors, fd in process.siblings.items():
            try:
                slot = doors.open(fd)
            except OSError as exc:
                self._log.warning(
                    "door_not_opened", pid=process.pid, socket=doors.name, error=str(exc)
                )
                slot = None
            finally:
                os.close(fd)
            if slot is not None:
                process.doors[doors] = slot
        process.siblings.clear()
        if process.doors:
            process.record_doors()
            self.changed()

    def _close_doors(self, process: Process) -> bool:
        """No new connection for ``process`` from now on (it is stopping or gone); whether
        it had a door open. The copies of its sockets kept for its doors are closed."""
        for fd in process.siblings.values():
            os.close(fd)
        process.siblings.clear()
        if not process.doors:
            return False
        for doors, slot in process.doors.items():
            try:
                doors.close(slot)
            except OSError as exc:
                self._log.warning(
                    "door_not_closed", pid=process.pid, socket=doors.name, error=str(exc)
                )
        process.doors.clear()
        return True

    def _signal(self, process: Process, signum: int, tree: ProcessTree | None = None) -> None:
        """Signal the worker (with its tree when stopping it), through the signal hooks."""
        if signum != signal.SIGKILL and not self._hook(
            "before_signal", pid=process.pid, signum=signum
        ):
            return
        if signum in (self.config.stop_signal, signal.SIGKILL):
            self._publish("kill", {"process_pid": process.pid, "time": time.time()})
        if tree is not None:
            tree.signal(signum, leader_alive=not process.exited.done())
        else:
            self.runtime.children.send_signal(process.pid, signum)
        self._hook("after_signal", pid=process.pid, signum=signum)

    # -- events and hooks -------------------------------------------------------

    def _hook(self, name: str, **extra: Any) -> bool:
        return bool(self.hooks.run(name, self, self.runtime.arbiter, **extra))

    def _publish(self, event: str, payload: dict | None = None) -> None:
        self.runtime.events.publish(self.name, event, payload or {"time": time.time()})

    def _publish_hook(self, event: str, payload: dict) -> None:
        self.runtime.events.publish(self.name, event, payload)

    def _publish_own(self, event: str, payload: dict) -> None:
        """chapiteau's own events, on a topic Circus clients do not subscribe to."""
        self.runtime.events.publish_topic(
            own_topic(self.name, event),
            {**payload, "time": time.time()},
        )

    def close_streams(self) -> None:
        _close_streams((self.stdout_stream, self.stderr_stream))

    def reopen_streams(self) -> None:
        for stream in (self.stdout_stream, self.stderr_stream):
            if stream is not None:
                reopen_stream(stream)


async def _tree_gone(process: Process, tree: ProcessTree, deadline: float) -> bool:
    """Wait until the worker and every member of its tree exited; False at ``deadline``."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.exited), max(0.0, deadline - loop.time()))
    if not process.exited.done():
        return False
    # What the worker left behind (re-parented to us) got the signal with it.
    await tree.refresh(leader_alive=False)
    return await tree.wait_members(max(0.0, deadline - loop.time()))


def _resolve(spawned: asyncio.Future[Any] | None) -> None:
    if spawned is not None and not spawned.done():
        spawned.set_result(None)


def _close_streams(streams: Iterable[Any]) -> None:
    for stream in streams:
        if stream is not None:
            close_stream(stream)


def _spec(
    config: WatcherConfig,
    wid: int,
    plan: Any,
    stdout: Pipe | None,
    stderr: Pipe | None,
    notify_env: Mapping[str, str],
) -> SpawnSpec:
    """What to fork and exec for process ``wid`` of ``config`` with the sockets of ``plan``
    (``notify_env``: NOTIFY_SOCKET and WATCHDOG_USEC, with WATCHDOG_PID set in the child)."""
    return SpawnSpec(
        argv=tuple(format_args(config, wid, plan.numbers)),
        env={**worker_env(config.env), **markers(config.name), **notify_env},
        executable=config.executable,
        working_dir=config.working_dir,
        uid=config.uid,
        gid=config.gid,
        user_name=_user_name(config.uid),
        umask=config.umask,
        rlimits=_rlimits(config.rlimits),
        fds=plan.fds,
        stdin=plan.stdin,
        stdout=stdout[1] if stdout else None,
        stderr=stderr[1] if stderr else None,
        close_stdout=config.close_child_stdout,
        close_stderr=config.close_child_stderr,
        listen_fds_names=plan.listen_fds_names,
        own_pid_variables=("WATCHDOG_PID",) if "WATCHDOG_USEC" in notify_env else (),
    )


def _stream(config: WatcherConfig, name: str) -> Any:
    conf = getattr(config, f"{name}_stream")
    if not conf:
        return None
    return build_stream(conf, where=f"watcher:{config.name}:{name}_stream")


def _rlimits(limits: dict[str, int]) -> dict[int, tuple[int, int]]:
    return {RLIMITS[name.upper()]: (v, v) for name, v in limits.items()}


@functools.cache
def _user_name(uid: int | None) -> str | None:
    """The name of ``uid`` for its supplementary groups; looked up once, not at every spawn."""
    if uid is None:
        return None
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _pythonpath(config: WatcherConfig) -> list[str]:
    return [p for p in config.env.get("PYTHONPATH", "").split(os.pathsep) if p]
