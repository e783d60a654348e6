"""The arbiter: the supervisor's event loop, its watchers and its signals.

``Arbiter.run`` reads top to bottom: become a subreaper, watch children
through pidfds, start the watchers by priority, then wait until told to quit.
Nothing polls: a child's exit, a signal or a command wakes the loop, and an
idle supervisor sleeps in epoll with no timer armed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable

import structlog

from chapiteau.protocol.ini import ConfigError
from chapiteau.supervisor.broker_client import BrokerClient, BrokerError
from chapiteau.supervisor.child_exit import ChildWatcher, become_subreaper
from chapiteau.supervisor.config import Config
from chapiteau.supervisor.events import Events
from chapiteau.supervisor.redirector import Redirector
from chapiteau.supervisor.socket_pool import SocketPool
from chapiteau.supervisor.watcher import Flapping, Runtime, Watcher

log = structlog.get_logger("chapiteau.supervisor")

FLAPPING_PLUGIN = "circus.plugins.flapping.Flapping"


class Arbiter:
    """Owns the watchers and everything they share."""

    def __init__(self, config: Config, broker: BrokerClient | None, sockets: SocketPool) -> None:
        self.config = config
        self.broker = broker
        self.sockets = sockets
        self.events = Events()
        self.watchers: dict[str, Watcher] = {}
        self.pids: dict[int, Watcher] = {}
        self.stopping = False
        self._done: asyncio.Future[None] | None = None
        self._runtime: Runtime | None = None
        self.flapping = _flapping(config)

    async def run(self) -> int:
        """Start every autostart watcher and serve until ``quit``; return the exit status."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        become_subreaper()
        if self.config.circus.umask is not None:
            os.umask(self.config.circus.umask)
        children = ChildWatcher(loop, self._child_exited, self._orphan_reaped)
        redirector = Redirector(loop)
        self._runtime = Runtime(
            loop=loop,
            children=children,
            sockets=self.sockets,
            redirector=redirector,
            events=self.events,
            arbiter=self,
            register_pid=self._register_pid,
            flapping=self.flapping,
        )
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(self.quit()))
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload_all()))
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        for plugin in self.config.plugins:
            if plugin.use != FLAPPING_PLUGIN:
                log.warning("plugin_not_started", plugin=plugin.name, use=plugin.use)
        for watcher_config in self.config.watchers:
            self.watchers[watcher_config.name.lower()] = Watcher(watcher_config, self._runtime)
        log.info("supervisor_ready", watchers=len(self.watchers), pid=os.getpid())
        await self.start_watchers(self.by_priority(), autostart_only=True)
        await self._done
        children.close()
        redirector.close()
        for watcher in self.watchers.values():
            watcher.close_streams()
        return 0

    def by_priority(self) -> list[Watcher]:
        """Watchers in start order: priority descending, then name."""
        return sorted(self.watchers.values(), key=lambda w: (-w.config.priority, w.name))

    async def start_watchers(self, watchers: Iterable[Watcher], autostart_only: bool) -> None:
        """Start watchers one after another, pausing ``[circus] warmup_delay`` between them."""
        first = True
        for watcher in watchers:
            if autostart_only and not watcher.config.autostart:
                continue
            if not first and self.config.circus.warmup_delay > 0:
                await asyncio.sleep(self.config.circus.warmup_delay)
            first = False
            await watcher.start()

    async def quit(self, shutdown_broker: bool = False) -> None:
        """Stop every watcher (concurrently, each with its graceful timeout), then exit.

        ``shutdown_broker`` is for the ``quit`` command: the whole tree stops. A
        signal to the supervisor alone only ends this supervisor, and the broker
        starts a new one on the same sockets (how a new version is rolled out).
        """
        if self.stopping:
            return
        self.stopping = True
        log.info("supervisor_stopping", shutdown_broker=shutdown_broker)
        if shutdown_broker and self.broker is not None:
            try:
                self.broker.shutdown()
            except BrokerError as exc:
                log.warning("broker_shutdown_failed", error=str(exc))
        await asyncio.gather(*(watcher.stop() for watcher in self.watchers.values()))
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def reload_all(self) -> None:
        """Gracefully reload every watcher in priority order (SIGHUP, ``reload`` without name)."""
        self.reopen_logs()
        first = True
        for watcher in self.by_priority():
            if not first and self.config.circus.warmup_delay > 0:
                await asyncio.sleep(self.config.circus.warmup_delay)
            first = False
            await watcher.reload()

    def reopen_logs(self) -> None:
        for watcher in self.watchers.values():
            watcher.reopen_streams()
        log.info("logs_reopened")

    def _register_pid(self, pid: int, watcher: Watcher) -> None:
        self.pids[pid] = watcher

    def _child_exited(self, pid: int, code: int) -> None:
        watcher = self.pids.pop(pid, None)
        if watcher is not None:
            watcher.process_exited(pid, code)

    def _orphan_reaped(self, pid: int, code: int) -> None:
        log.debug("orphan_reaped", pid=pid, exit_code=code)


def _flapping(config: Config) -> Flapping:
    """The crash-loop policy: built in, tuned by a [plugin:flapping] section if present."""
    for plugin in config.plugins:
        if plugin.use == FLAPPING_PLUGIN:
            try:
                return Flapping(
                    window=float(plugin.config.get("window", "1.0")),
                    max_retry=int(plugin.config.get("max_retry", "-1")),
                )
            except ValueError as exc:
                raise ConfigError(str(exc), file=config.path, section=plugin.name) from None
    return Flapping()
