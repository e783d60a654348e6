"""One watcher: a named group of identical processes, kept at the configured count.

What happens when a worker dies? Read ``Watcher.process_exited``: the exit is
reported by the child watcher the moment the kernel makes the pidfd readable;
the process is forgotten, a ``reap`` event goes out, and unless the watcher is
stopping (or ``respawn = false``) a replacement is spawned at once. Deaths soon
after a spawn make their round of spawns a failed one, and each further failed
round doubles the delay before the next respawn (capped; see
`chapiteau.supervisor.crash_rounds`), so a crash loop costs bounded CPU while a
one-off crash is repaired in milliseconds.

A reload never leaves a watcher with fewer processes than before: the old
processes stop only once their replacements run; if one cannot start, the new
ones stop instead and `ReloadError` tells the caller.

Every operation that changes the process set (start, stop, restart, reload,
incr/decr, respawn) runs under the watcher's own lock, so operations on one
watcher queue in order while different watchers proceed concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from chapiteau.supervisor.children.child_exit import ChildWatcher
from chapiteau.supervisor.children.process_tree import ProcessTree
from chapiteau.supervisor.children.spawn import SpawnError, SpawnSpec, spawn
from chapiteau.supervisor.config import Flapping, WatcherConfig, worker_env
from chapiteau.supervisor.crash_rounds import CrashRounds, backoff
from chapiteau.supervisor.events import Events
from chapiteau.supervisor.hooks import Hooks
from chapiteau.supervisor.io.redirector import Redirector
from chapiteau.supervisor.io.streams import build_stream, close_stream, reopen_stream
from chapiteau.supervisor.process import Process
from chapiteau.supervisor.socket_pool import SocketPool
from chapiteau.supervisor.substitution import format_args

log = structlog.get_logger("chapiteau.supervisor")

STOPPED, STARTING, ACTIVE, STOPPING = "stopped", "starting", "active", "stopping"
KILL_WAIT = 10.0
"""How long to wait for a SIGKILLed process to be reaped before giving up on it."""


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
    workers: dict[int, Watcher]
    """Every live worker's pid, whichever watcher it belongs to."""
    flapping: Flapping
    """The configuration's crash-loop policy (reloadconfig replaces it)."""


class Watcher:
    """Keeps ``numprocesses`` processes of one command alive."""

    def __init__(self, config: WatcherConfig, runtime: Runtime) -> None:
        self.config = config
        self.name = config.name
        self.runtime = runtime
        self.state = STOPPED
        self.processes: dict[int, Process] = {}
        self.lock = asyncio.Lock()
        self.hooks = Hooks(config.name, config.hooks, self._publish_hook, _pythonpath(config))
        self.stdout_stream = _stream(config, "stdout")
        self.stderr_stream = _stream(config, "stderr")
        self.crashes = CrashRounds()
        self.spawn_failures = 0
        self.on_demand_fds: list[int] = []
        self.respawn_timer: asyncio.TimerHandle | None = None
        self._log = log.bind(watcher=config.name)

    # -- commands (each takes the lock) --------------------------------------

    async def start(self) -> dict[str, list[int]]:
        """Start the processes (or top them up); report started and kept pids."""
        async with self.lock:
            kept = sorted(self.processes)
            await self._start()
            return {"started": sorted(set(self.processes) - set(kept)), "kept": kept}

    async def stop(self) -> None:
        async with self.lock:
            await self._stop()

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

        An old process stops only once its replacement runs. If a new process
        cannot start, the new ones stop, the old ones keep serving and
        `ReloadError` says why. ``spawned`` gets its result once the new
        processes run, before the old ones are stopped (with ``sequential``,
        once the first one runs; for a start or a restart, at once).
        """
        if not graceful:
            _resolve(spawned)
            return await self.restart()
        async with self.lock:
            old = list(self.processes.values())
            if self.state == STOPPED:
                _resolve(spawned)
                await self._start()
            elif self.config.send_hup:
                for process in old:
                    # Circus sends the reload SIGHUP to the worker alone, bypassing the hooks.
                    self.runtime.children.send_signal(process.pid, signal.SIGHUP)
                return {"stopped": [], "started": [], "kept": sorted(self.processes)}
            elif sequential or self.config.singleton:
                for process in old:
                    await self._replace(process, len(old))
                    _resolve(spawned)
                    await self._warmup()
            else:
                await self._spawn_replacements(self.config.numprocesses, len(old))
                _resolve(spawned)
                await asyncio.gather(*(self._kill(process) for process in old))
            self._publish("reload")
            old_pids = {process.pid for process in old}
            return {
                "stopped": sorted(old_pids),
                "started": sorted(set(self.processes) - old_pids),
                "kept": [],
            }

    async def _spawn_replacements(self, count: int, serving: int) -> list[Process]:
        """Spawn ``count`` processes, or none: after a failure the new ones stop again."""
        new: list[Process] = []
        try:
            for _ in range(count):
                new.append(await self._try_spawn())
        except NotStarted as exc:
            await asyncio.gather(*(self._kill(process) for process in new))
            raise self._reload_failed(exc, serving) from None
        return new

    async def _replace(self, process: Process, serving: int) -> None:
        """Sequential reload: the replacement of ``process`` first, then ``process`` stops.

        A singleton never runs twice, even for a moment: its old process stops
        first, and a replacement that cannot start is retried as after a failed
        spawn.
        """
        if not self.config.singleton:
            await self._spawn_replacements(1, serving)
            await self._kill(process)
            return
        await self._kill(process)
        try:
            await self._try_spawn()
        except NotStarted as exc:
            delay = backoff(self.spawn_failures)
            self._respawn_after(delay)
            self._log.error("reload_failed", error=str(exc), retry_in=delay)
            raise ReloadError(
                f"a new process cannot start ({exc}); a singleton's old process stops first, "
                f"so it is started again in {delay} s"
            ) from None

    def _reload_failed(self, reason: NotStarted, serving: int) -> ReloadError:
        self._log.error("reload_failed", error=str(reason), serving=serving)
        return ReloadError(
            f"a new process cannot start ({reason}); {serving} running process(es) keep serving"
        )

    async def set_numprocesses(self, count: int) -> int:
        """Change the target count and spawn or stop (the oldest) to reach it."""
        return await self._resize(lambda _: count)

    async def change_numprocesses(self, delta: int) -> int:
        """incr/decr: move the target count by ``delta`` (not below 0) and reach it."""
        return await self._resize(lambda current: current + delta)

    async def _resize(self, new_count: Callable[[int], int]) -> int:
        """Set the target count to ``new_count(current count)``, not below 0, and reach it."""
        async with self.lock:
            count = max(0, new_count(self.config.numprocesses))
            self.config = replace(self.config, numprocesses=count)
            if self.state == ACTIVE:
                await self._reconcile()
            return self.config.numprocesses

    def configure(
        self,
        config: WatcherConfig,
        reload: bool,
        updated: int = 1,
        spawned: asyncio.Future[Any] | None = None,
    ) -> Awaitable[None]:
        """The ``set`` command: load ``config``'s hooks and streams now (errors raise here),
        and return the work that switches to it, reloading when only new processes can
        take the change; one ``updated`` event per changed key, as Circus. If the reload
        cannot start the new processes, the watcher goes back to its previous
        configuration and `ReloadError` is raised (``spawned``: see `reload`).
        """
        hooks_changed = config.hooks != self.config.hooks
        if hooks_changed:
            self.hooks.reload(config.hooks)
        streams = {
            name: _stream(config, name)
            for name in ("stdout", "stderr")
            if getattr(config, f"{name}_stream") != getattr(self.config, f"{name}_stream")
        }
        return self._configure(config, reload or bool(streams), streams, updated, spawned)

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
            old_streams = {name: getattr(self, f"{name}_stream") for name in streams}
            for name, stream in streams.items():
                setattr(self, f"{name}_stream", stream)
            self.config = config
            for _ in range(updated):
                self._publish("updated")
            if self.state == ACTIVE and not reload:
                await self._reconcile()
        if reload and self.state != STOPPED:
            try:
                await self.reload(spawned=spawned)
            except ReloadError as exc:
                async with self.lock:
                    self.config = previous
                    for name, stream in old_streams.items():
                        setattr(self, f"{name}_stream", stream)
                    if self.state == ACTIVE:
                        await self._reconcile()
                _close_streams(streams.values())
                raise ReloadError(f"{exc}, with the previous settings") from None
        _close_streams(old_streams.values())

    async def kill(
        self, pid: int | None = None, signum: int | None = None, timeout: float | None = None
    ) -> None:
        """Stop one or every process gracefully, then spawn their replacements."""
        targets = [self.processes[pid]] if pid in self.processes else []
        if pid is None:
            targets = list(self.processes.values())
        await asyncio.gather(*(self._kill(p, signum, timeout) for p in targets))
        async with self.lock:
            if self.state == ACTIVE:
                await self._reconcile()

    def send_signal(self, signum: int, pid: int | None = None) -> None:
        for process in [self.processes[pid]] if pid in self.processes else self.processes.values():
            self._signal(process, signum)

    # -- the life of the processes --------------------------------------------

    async def _start(self, demanded: bool = False) -> None:
        if self.state == ACTIVE:
            await self._reconcile()
            return
        if self.config.on_demand and not demanded and self._arm_on_demand():
            return
        self.state = STARTING
        if not self._hook("before_start"):
            self.state = STOPPED
            self._log.warning("watcher_start_refused", hook="before_start")
            return
        self.crashes.reset()
        self.spawn_failures = 0
        await self._reconcile()
        if self.state != STARTING:
            return
        self.state = ACTIVE
        self._log.info("watcher_started", processes=len(self.processes))
        self._publish("start")
        if not self._hook("after_start"):
            await self._stop()

    async def _stop(self) -> None:
        self._disarm_on_demand()
        if self.state == STOPPED and not self.processes:
            return
        self.state = STOPPING
        self._cancel_respawn()
        self._hook("before_stop")
        await asyncio.gather(*(self._kill(process) for process in list(self.processes.values())))
        self.state = STOPPED
        self._log.info("watcher_stopped")
        self._publish("stop")
        self._hook("after_stop")

    def _arm_on_demand(self) -> bool:
        """Start at the first connection to one of this watcher's sockets (``on_demand``).

        Only this watcher starts, whatever its place in the start order, and a
        stopped watcher stays stopped: Circus starts every autostart watcher on
        a connection to any socket, and this one only if it comes first.
        The loop watches the listening sockets only while the watcher
        waits; the client stays in the accept queue until a worker accepts it.
        Returns False when the watcher has no socket to wait on.
        """
        names = self.runtime.sockets.names_for(self.config)
        if not names:
            return False
        if not self.on_demand_fds:
            self.on_demand_fds = [self.runtime.sockets.sockets[name].fd for name in names]
            for fd in self.on_demand_fds:
                self.runtime.loop.add_reader(fd, self._on_demand_connection)
            self._log.info("on_demand_waiting", sockets=list(names))
        return True

    def _disarm_on_demand(self) -> None:
        for fd in self.on_demand_fds:
            self.runtime.loop.remove_reader(fd)
        self.on_demand_fds = []

    def _on_demand_connection(self) -> None:
        self._disarm_on_demand()
        self._log.info("on_demand_triggered")
        self.runtime.loop.create_task(self._start_on_demand())

    async def _start_on_demand(self) -> None:
        async with self.lock:
            if self.state == STOPPED:
                await self._start(demanded=True)

    async def _reconcile(self) -> None:
        """Spawn the missing processes, or stop the oldest extra ones."""
        extra = len(self.processes) - self.config.numprocesses
        if extra > 0:
            oldest = sorted(self.processes.values(), key=lambda p: p.started_monotonic)[:extra]
            await asyncio.gather(*(self._kill(process) for process in oldest))
        while len(self.processes) < self.config.numprocesses and self.state in (STARTING, ACTIVE):
            if await self._spawn_one() is None:
                return
            if len(self.processes) < self.config.numprocesses:
                await self._warmup()

    async def _warmup(self) -> None:
        if self.config.warmup_delay > 0:
            await asyncio.sleep(self.config.warmup_delay)

    async def _spawn_one(self) -> Process | None:
        """Spawn one process; after a failure retry later (max_retry times), then stop.

        The retry waits on a timer, not under the lock, so that a watcher whose
        command cannot start never blocks stop, other commands, or the start
        of the watchers after it (Circus issue #1157).
        """
        try:
            return await self._try_spawn()
        except HookRefused as exc:
            await self._stop_after_failure(str(exc))
        except NotStarted as exc:
            if 0 <= self.config.max_retry < self.spawn_failures:
                await self._stop_after_failure(f"spawn failed {self.spawn_failures} times: {exc}")
            else:
                self._respawn_after(backoff(self.spawn_failures))
        return None

    async def _try_spawn(self) -> Process:
        """Spawn one process through its hooks; raise NotStarted if it does not run."""
        if not self._hook("before_spawn"):
            raise HookRefused("before_spawn hook refused the spawn")
        try:
            process = self._spawn()
        except (SpawnError, OSError, ValueError) as exc:
            self.spawn_failures += 1
            errno = getattr(exc, "errno", None)
            self._log.error(
                "spawn_failed", error=str(exc), errno=errno, attempt=self.spawn_failures
            )
            self._publish_own(
                "spawn_failed", {"error": str(exc), "errno": errno, "attempt": self.spawn_failures}
            )
            raise NotStarted(str(exc)) from exc
        self.spawn_failures = 0
        if not self._hook("after_spawn", pid=process.pid):
            await self._kill(process)
            raise HookRefused("after_spawn hook refused the process")
        return process

    def _spawn(self) -> Process:
        """Fork and exec one process now, and start watching it."""
        config = self.config
        wid = self._next_wid()
        plan = self.runtime.sockets.plan(config)
        stdout = _pipe() if self.stdout_stream else None
        stderr = _pipe() if self.stderr_stream else None
        try:
            spec = SpawnSpec(
                argv=tuple(format_args(config, wid, plan.numbers)),
                env=worker_env(config.env),
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
            )
            pid = spawn(spec)
        except BaseException:
            for pipe in (stdout, stderr):
                if pipe:
                    os.close(pipe[0])
            raise
        finally:
            for fd in plan.owned:
                os.close(fd)
            for pipe in (stdout, stderr):
                if pipe:
                    os.close(pipe[1])
        process = Process(pid, wid, self.runtime.loop.create_future(), self.crashes.current)
        self.processes[pid] = process
        self.runtime.workers[pid] = self
        self.runtime.children.watch(pid)
        if stdout and self.stdout_stream:
            self.runtime.redirector.add(stdout[0], pid, "stdout", self.stdout_stream)
        if stderr and self.stderr_stream:
            self.runtime.redirector.add(stderr[0], pid, "stderr", self.stderr_stream)
        self._arm_max_age(process)
        self._log.info("process_spawned", pid=pid, wid=wid)
        self._publish("spawn", {"process_pid": pid, "time": process.started})
        return process

    def _next_wid(self) -> int:
        """The lowest wid in use by nobody, from 1 to 2 x numprocesses (as in Circus)."""
        used = {process.wid for process in self.processes.values()}
        for wid in range(1, 2 * max(1, self.config.numprocesses) + len(used) + 1):
            if wid not in used:
                return wid
        raise RuntimeError("no wid left")

    def process_exited(self, pid: int, code: int) -> None:
        """The child watcher saw ``pid`` exit: forget it, report it, replace it if needed."""
        process = self.processes.pop(pid, None)
        if process is None:
            return
        process.cancel_timers()
        self.runtime.redirector.remove_pid(pid)
        if not process.exited.done():
            process.exited.set_result(code)
        now = time.time()
        self._hook("before_reap", process_pid=pid, time=now)
        self._log.info("process_reaped", pid=pid, wid=process.wid, exit_code=code)
        self._publish("reap", {"process_pid": pid, "time": now, "exit_code": code})
        self._hook("after_reap", process_pid=pid, time=now, exit_code=code, process_status=None)
        if process.stopping or self.state not in (ACTIVE, STARTING):
            return
        if not self.config.respawn:
            if not self.processes and self.state == ACTIVE:
                self.runtime.loop.create_task(self.stop())
            return
        self._schedule_respawn(process)

    def _schedule_respawn(self, process: Process) -> None:
        flapping = self.runtime.flapping
        respawn = self.crashes.exited(
            process.crash_round, process.age, flapping.window, flapping.max_retry
        )
        if respawn is None:
            self._log.error("crash_loop_stopped", failed_rounds=self.crashes.failed)
            self._publish_own("crash_loop_stopped", {"failed_rounds": self.crashes.failed})
            self.runtime.loop.create_task(self.stop())
            return
        if not respawn.new_failure and self.respawn_timer is not None:
            return  # the respawn of this round is already due
        if respawn.new_failure and respawn.delay > 0:
            payload = {"failed_rounds": respawn.failed_rounds, "delay": respawn.delay}
            self._log.warning("crash_loop_backoff", **payload)
            self._publish_own("crash_loop_backoff", payload)
        self._respawn_after(respawn.delay)

    async def _respawn(self) -> None:
        self.respawn_timer = None
        async with self.lock:
            if self.state == ACTIVE:
                await self._reconcile()

    async def _expire(self, process: Process) -> None:
        """max_age: the replacement starts before the old process stops, so capacity never dips.

        A singleton is the exception: it must never run twice, so it stops first.
        """
        async with self.lock:
            if process.pid not in self.processes or self.state != ACTIVE:
                return
            process.stopping = True
            if self.config.singleton:
                await self._kill(process)
                await self._spawn_one()
                return
            try:
                await self._try_spawn()
            except NotStarted as exc:
                # Without its replacement the old process serves on, and expires again later.
                self._log.error("max_age_replacement_failed", pid=process.pid, error=str(exc))
                process.stopping = False
                self._arm_max_age(process)
                return
            await self._kill(process)

    def _arm_max_age(self, process: Process) -> None:
        if self.config.max_age > 0:
            lifetime = self.config.max_age + random.randint(0, max(0, self.config.max_age_variance))
            process.max_age_timer = self.runtime.loop.call_later(
                lifetime, lambda: self.runtime.loop.create_task(self._expire(process))
            )

    async def _kill(
        self, process: Process, signum: int | None = None, timeout: float | None = None
    ) -> None:
        """Stop the worker's whole tree: a signal, graceful_timeout, then SIGKILL to what is left.

        The tree is the worker's process group plus every descendant that left
        it (setsid), so nothing the worker started outlives it; Circus orphans
        them.
        """
        process.stopping = True
        process.cancel_timers()
        loop = self.runtime.loop
        grace = self.config.graceful_timeout if timeout is None else timeout
        tree = ProcessTree(process.pid, others=self.runtime.workers)
        try:
            signum = self.config.stop_signal if signum is None else signum
            self._signal(process, signum, tree)
            if await _tree_gone(process, tree, loop.time() + grace):
                return
            self._log.warning(
                "process_kill_escalated", pid=process.pid, after=grace, left=tree.alive()
            )
            self._publish("kill", {"process_pid": process.pid, "time": time.time()})
            tree.signal(signal.SIGKILL, leader_alive=not process.exited.done())
            await _tree_gone(process, tree, loop.time() + KILL_WAIT)
        finally:
            tree.close()

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

    async def _stop_after_failure(self, reason: str) -> None:
        self._log.error("watcher_stopped_on_failure", reason=reason)
        await self._stop()

    def _respawn_after(self, delay: float) -> None:
        """Reach the target count again in ``delay`` seconds (replacing a pending respawn)."""
        self._cancel_respawn()
        self.respawn_timer = self.runtime.loop.call_later(
            delay, lambda: self.runtime.loop.create_task(self._respawn())
        )

    def _cancel_respawn(self) -> None:
        if self.respawn_timer is not None:
            self.respawn_timer.cancel()
            self.respawn_timer = None

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
            f"chapiteau.{self.name.lower().replace(' ', '_')}.{event}",
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
    tree.refresh()
    return await tree.wait_members(max(0.0, deadline - loop.time()))


def _resolve(spawned: asyncio.Future[Any] | None) -> None:
    if spawned is not None and not spawned.done():
        spawned.set_result(None)


def _close_streams(streams: Iterable[Any]) -> None:
    for stream in streams:
        if stream is not None:
            close_stream(stream)


def _pipe() -> tuple[int, int]:
    read, write = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read, False)
    return read, write


def _stream(config: WatcherConfig, name: str) -> Any:
    conf = getattr(config, f"{name}_stream")
    if not conf:
        return None
    return build_stream(conf, where=f"watcher:{config.name}:{name}_stream")


def _rlimits(limits: dict[str, int]) -> dict[int, tuple[int, int]]:
    return {getattr(resource, f"RLIMIT_{name.upper()}"): (v, v) for name, v in limits.items()}


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _pythonpath(config: WatcherConfig) -> list[str]:
    return [p for p in config.env.get("PYTHONPATH", "").split(os.pathsep) if p]
