"""Adopt, at start, the workers the previous supervisor generation left (spawn mode).

`Adoption.run` reads the snapshot and the pipes the broker held
(`chapiteau.supervisor.handover`), then, for each recorded watcher: applies
again the options changed at run time, and adopts each recorded process that
still runs as the same process (`claim`); the processes of a watcher the
configuration no longer has, and every child of the broker that carries our
worker marker but that the snapshot does not know (`orphans`), are stopped
gracefully in the background (`retire`), their output pipes kept open until
they are gone. Nothing is left unmanaged.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Mapping

import structlog

from chapiteau.supervisor.broker_client import BrokerError
from chapiteau.supervisor.commands.base import CommandError
from chapiteau.supervisor.commands.options import apply_options, parse_options
from chapiteau.supervisor.handover import Handover, claim, orphans, retire
from chapiteau.supervisor.hooks import HookError
from chapiteau.supervisor.io.streams import StreamConfigError
from chapiteau.supervisor.state import WatcherRecord
from chapiteau.supervisor.watcher import ReloadError, Watcher

log = structlog.get_logger("chapiteau.supervisor")

NOT_RESTARTED = ("stopped", "failed", "stopping")
"""Phases of a recorded watcher that the next generation leaves stopped."""
DEFAULT_STOP = (signal.SIGTERM, 30.0)
"""How a worker of a watcher that no longer exists is stopped: signal, graceful timeout."""


class Adoption:
    """What one supervisor start takes over, and the workers it is still stopping."""

    def __init__(self, handover: Handover, broker_pid: int, listen: Callable[[str], None]) -> None:
        """``listen`` opens the NOTIFY_SOCKET on the previous generation's address (OSError
        when it cannot)."""
        self.handover = handover
        self.broker_pid = broker_pid
        self.listen = listen
        self.retiring: set[asyncio.Task[None]] = set()
        """The graceful stops of unmanaged workers still under way."""

    async def run(self, watchers: Mapping[str, Watcher], sockets: set[str]) -> dict[Watcher, bool]:
        """Adopt what runs on into ``watchers`` (by lower-cased name; ``sockets``: the
        socket names the broker serves). Returns whether to start each recorded watcher
        (an operator may have stopped it); the others start if ``autostart``."""
        try:
            snapshot, pipes = self.handover.take()
        except BrokerError as exc:
            # Without the snapshot nothing can be adopted: every worker left is stopped.
            log.error("adoption_failed", error=str(exc))
            snapshot, pipes = None, {}
        records = snapshot.watchers if snapshot is not None else ()
        # Before any adopted worker's watchdog runs: its WATCHDOG=1 goes to this address.
        address = snapshot.notify_socket if snapshot is not None else None
        unheard = self._listen(address)
        wanted: dict[Watcher, bool] = {}
        known: set[int] = set()
        adopted = retired = 0
        for record in records:
            watcher = watchers.get(record.name.lower())
            if watcher is not None:
                await _restore(watcher, record, sockets)
                wanted[watcher] = record.phase not in NOT_RESTARTED
            known.update(process.pid for process in record.processes)
            taken, stopped = self._claim(record, watcher, pipes)
            adopted, retired = adopted + taken, retired + stopped
        retired += self._retire_orphans(known, watchers)
        for fd in pipes.values():
            os.close(fd)
        self.handover.release(pipes)
        if unheard is not None:
            log.warning(
                "adopted_workers_unheard",
                address=address,
                error=unheard,
                watchers=sorted(w.name for w in wanted if w.processes and w.notified_workers),
                consequence="the notify socket's name was taken: these watchers' adopted "
                "workers can no longer send sd_notify messages, a watchdog restarts them",
            )
        for watcher, start in wanted.items():
            if not start and watcher.processes:
                await watcher.stop()
        log.info(
            "adopted",
            processes=adopted,
            stopped=retired,
            watchers=sorted(w.name for w in wanted if w.processes),
            snapshot=snapshot.serial if snapshot is not None else None,
        )
        return wanted

    def _listen(self, address: str | None) -> str | None:
        """Open the previous generation's notify socket address, if it had one; why not,
        when that fails."""
        if address is None:
            return None
        try:
            self.listen(address)
        except OSError as exc:
            return exc.strerror
        return None

    def _claim(
        self, record: WatcherRecord, watcher: Watcher | None, pipes: dict[str, int]
    ) -> tuple[int, int]:
        """Adopt into ``watcher`` the recorded processes that still run, or stop them in
        the background when the configuration no longer has their watcher: how many
        were adopted, and how many are being stopped."""
        adopted = stopped = 0
        stop = (record.stop_signal, record.graceful_timeout)
        for process in record.processes:
            pidfd = claim(process, self.broker_pid)
            if pidfd is None:
                continue
            if watcher is None:
                outputs = {key: pipes.pop(key) for key in process.keys if key in pipes}
                self._retire(process.pid, pidfd, stop, outputs)
                stopped += 1
            else:
                watcher.adopt(process, pidfd, pipes, record.spawns.get(process.wid, 1))
                adopted += 1
        return adopted, stopped

    def _retire_orphans(self, known: set[int], watchers: Mapping[str, Watcher]) -> int:
        """Stop, in the background, the workers the snapshot does not know; how many."""
        count = 0
        for pid, pidfd, name in orphans(known, self.broker_pid):
            watcher = watchers.get(name.lower())
            config = watcher.config if watcher is not None else None
            stop = (config.stop_signal, config.graceful_timeout) if config else DEFAULT_STOP
            self._retire(pid, pidfd, stop, {})
            count += 1
        return count

    def _retire(
        self, pid: int, pidfd: int, stop: tuple[int, float], outputs: dict[str, int]
    ) -> None:
        """Stop a worker that no watcher manages, in the background; its output pipes
        (read ends by broker key) stay open until it is gone, so that it gets no SIGPIPE
        while it stops."""
        signum, timeout = stop
        log.info("orphan_stopping", pid=pid, signal=signum, graceful_timeout=timeout)

        async def run() -> None:
            try:
                await retire(pid, pidfd, signum, timeout)
            finally:
                for fd in outputs.values():
                    os.close(fd)
                self.handover.release(outputs)

        task = asyncio.get_running_loop().create_task(run())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)


async def _restore(watcher: Watcher, record: WatcherRecord, sockets: set[str]) -> None:
    """Apply again the options ``set``/``incr``/``decr`` changed in the last generation,
    and its restart count."""
    watcher.lifecycle.restarts = record.restarts
    if not record.overrides:
        return
    try:
        new = apply_options(watcher.config, parse_options(record.overrides), sockets)
        await watcher.configure(new, reload=False, updated=0)
    except (CommandError, StreamConfigError, HookError, ReloadError) as exc:
        log.warning("overrides_dropped", watcher=watcher.name, error=str(exc))
        return
    watcher.overrides = dict(record.overrides)
