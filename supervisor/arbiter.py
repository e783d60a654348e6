"""The arbiter: the supervisor's event loop, its watchers and its signals.

``Arbiter.run`` reads top to bottom: become a subreaper, watch children
through pidfds, adopt the workers the previous supervisor generation left
(spawn mode, `chapiteau.supervisor.adoption`), start the watchers by priority,
then wait until told to quit, or to hand over to new code (``upgrade``).
Nothing polls: a child's exit, a signal or a command wakes the loop, and an
idle supervisor sleeps in epoll with no timer armed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import structlog

from chapiteau.protocol.constants import EX_CONFIG
from chapiteau.supervisor.adoption import Adoption
from chapiteau.supervisor.broker_client import BrokerClient, BrokerError, ReceivedSocket
from chapiteau.supervisor.children.child_exit import (
    ChildWatcher,
    become_subreaper,
    quiet_signal_wakeup,
)
from chapiteau.supervisor.children.process_tree import OrphanSearch
from chapiteau.supervisor.commands import dispatch
from chapiteau.supervisor.commands.base import CommandError
from chapiteau.supervisor.config import (
    CURVE_CLIENTS,
    CURVE_SECRET_KEY,
    Config,
    WatcherConfig,
    load_config,
)
from chapiteau.supervisor.endpoints.controller import Controller
from chapiteau.supervisor.endpoints.pubsub import PubSub
from chapiteau.supervisor.endpoints.stats import ProcessSampler, start_stats
from chapiteau.supervisor.endpoints.zmq_setup import Curve, EndpointError
from chapiteau.supervisor.events import Events
from chapiteau.supervisor.handover import Handover
from chapiteau.supervisor.io.notify import NotifySocket
from chapiteau.supervisor.io.redirector import Redirector
from chapiteau.supervisor.socket_pool import SocketPool
from chapiteau.supervisor.state import WatcherRecord
from chapiteau.supervisor.upgrade import UpgradeError, check_installed_code
from chapiteau.supervisor.watcher import ReloadError, Runtime, Watcher

if TYPE_CHECKING:
    from chapiteau.supervisor.endpoints.metrics import MetricsServer

log = structlog.get_logger("chapiteau.supervisor")


"""Exit status for a configuration the supervisor cannot run (sysexits.h); the broker does
not restart a first supervisor that exits with it."""


@dataclass
class ReloadPlan:
    """What a ``reloadconfig`` changes, decided before anything is touched."""

    config: Config
    removed: list[Watcher] = field(default_factory=list)
    added: list[Watcher] = field(default_factory=list)
    replaced: list[tuple[Watcher, Watcher]] = field(default_factory=list)
    """(running watcher, its replacement)."""
    reconfigured: list[tuple[Watcher, Watcher]] = field(default_factory=list)
    """(serving watcher, a watcher of its new configuration, built to check its hooks and
    streams): the serving one switches to that configuration and reloads gracefully,
    as ``set`` does, so that its old processes stop only once their replacements are
    ready."""
    resized: list[tuple[Watcher, int]] = field(default_factory=list)
    restarted: list[Watcher] = field(default_factory=list)
    """Unchanged watchers that use a socket the broker re-bound."""
    old_sockets: list[ReceivedSocket] = field(default_factory=list)

    def built(self) -> list[Watcher]:
        """The watchers made for the plan: what a plan that fails must close."""
        return [*self.added, *(new for _, new in (*self.replaced, *self.reconfigured))]


class Arbiter:
    """Owns the watchers and everything they share."""

    def __init__(
        self,
        config: Config,
        broker: BrokerClient | None,
        sockets: SocketPool,
        supervisor_start: int | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.sockets = sockets
        self.events = Events()
        self.watchers: dict[str, Watcher] = {}
        self.pids: dict[int, Watcher] = {}
        """The pid index: every live worker's watcher. Written here only (``adopt`` in
        `run`, `_child_exited`, `remove_watcher`)."""
        self.stopping = False
        self._done: asyncio.Future[None] | None = None
        self._runtime: Runtime | None = None
        self._notify: NotifySocket | None = None
        self.added: set[str] = set()
        """Lower-cased names of the watchers created by ``add``: reloadconfig keeps them."""
        self.sampler = ProcessSampler()
        """Per-process figures for the stats commands (the stats stream keeps its own)."""
        self.requests: Counter[tuple[str, str]] = Counter()
        """Control requests answered, by (command, reply status), for the metrics."""
        self.supervisor_start = supervisor_start
        """Which supervisor the broker started this one as (1 = the first); None when unknown
        (connect mode, or a broker that does not say)."""
        self.metrics: MetricsServer | None = None
        self.controller: Controller | None = None
        self.pubsub: PubSub | None = None
        self._reload_lock = asyncio.Lock()
        self.handover: Handover | None = None
        """Spawn mode: what the broker keeps for the next supervisor generation."""
        self.handing_over = False
        """``upgrade`` passed its check: exit leaving the workers to the next generation."""
        self._helpers: dict[int, asyncio.Future[int | None]] = {}
        """Children that are no workers (the upgrade check), by pid: their exit codes."""
        self._adoption: Adoption | None = None
        """Spawn mode: what this start adopted, and the orphans it still stops."""

    async def run(self) -> int:
        """Start every autostart watcher and serve until ``quit``; return the exit status."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        become_subreaper()
        if self.config.circus.umask is not None:
            os.umask(self.config.circus.umask)
        if self.broker is not None and self.supervisor_start is not None:
            # Spawn mode: the broker started us, and its children outlive us.
            tag = str(self.supervisor_start)
            self.handover = Handover(self.broker, loop, self._snapshot, tag, self._notify_address)
        self.attach(loop)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(self.quit()))
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_on_hup()))
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        loop.add_signal_handler(
            signal.SIGUSR2, lambda: asyncio.ensure_future(self._upgrade_on_signal())
        )
        quiet_signal_wakeup()
        try:
            self._open_endpoints()
            await self._open_metrics()
            stats = await start_stats(self)
        except EndpointError as exc:
            log.error("endpoint_failed", error=str(exc))
            print(f"chapiteau-supervisor: {exc}", file=sys.stderr)
            await self._close_endpoints()
            return EX_CONFIG
        log.info("supervisor_ready", watchers=len(self.watchers), pid=os.getpid())
        if self.broker is not None:
            try:
                self.broker.ready()
            except BrokerError as exc:
                log.warning("broker_ready_failed", error=str(exc))
        wanted: dict[Watcher, bool] = {}
        if self.handover is not None and self.broker is not None:
            self._adoption = Adoption(
                self.handover, self.broker.broker_pid, self._reopen_notify_socket
            )
            wanted = await self._adoption.run(self.watchers, set(self.sockets.sockets))
            # The previous snapshot stays whole until every process in it is adopted.
            self.handover.resume()
        self._restore_doors()
        await self.start_watchers(
            [w for w in self.by_priority() if wanted.get(w, w.config.autostart)],
            autostart_only=False,
        )
        await self._done
        stats.close()
        await self._close_endpoints()
        if self.handing_over:
            self._hand_over()
        self.detach()
        return 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Build, on ``loop``, what the watchers share (child exits, output redirection,
        the pid index) and the watchers of the configuration (stopped)."""
        children = ChildWatcher(loop, self._child_exited, self._orphan_reaped)

        def adopt(pid: int, watcher: Watcher, pidfd: int | None) -> None:
            self.pids[pid] = watcher
            if pidfd is None:
                children.watch(pid)
            else:
                children.watch_adopted(pid, pidfd)

        self._runtime = Runtime(
            loop=loop,
            children=children,
            sockets=self.sockets,
            redirector=Redirector(loop),
            events=self.events,
            arbiter=self,
            orphans=OrphanSearch(self.pids),
            adopt=adopt,
            notify_socket=self._notify_socket,
            flapping=self.config.flapping,
            handover=self.handover,
        )
        for watcher_config in self.config.watchers:
            self.watchers[watcher_config.name.lower()] = self.watcher(watcher_config)

    def detach(self) -> None:
        """Undo `attach` once the watchers are stopped (their processes are left alone)."""
        if self._runtime is not None:
            self._runtime.children.close()
            self._runtime.redirector.close()
        self._close_notify_socket()
        for watcher in self.watchers.values():
            watcher.close_streams()

    def _notify_socket(self) -> str:
        """The NOTIFY_SOCKET of the workers that tell their readiness, opened at first use
        (a supervisor whose watchers need none has none)."""
        if self._notify is None:
            self._notify = self._open_notify_socket(None)
            log.info("notify_socket_opened", address=self._notify.address)
        return self._notify.address

    def _reopen_notify_socket(self, address: str) -> None:
        """Listen on ``address``, the previous generation's NOTIFY_SOCKET, which its workers
        keep in their environment. OSError when that name is taken: the next worker that
        needs a NOTIFY_SOCKET gets a new one."""
        assert self._notify is None
        self._notify = self._open_notify_socket(address)
        log.info("notify_socket_reopened", address=address)

    def _open_notify_socket(self, address: str | None) -> NotifySocket:
        assert self._runtime is not None
        return NotifySocket(self._runtime.loop, self.pids.__contains__, self._notified, address)

    def _notify_address(self) -> str | None:
        return None if self._notify is None else self._notify.address

    def _close_notify_socket(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def _notified(self, pid: int, fields: Mapping[str, str]) -> None:
        watcher = self.pids.get(pid)
        if watcher is not None:
            watcher.notified(pid, fields)

    def _open_endpoints(self) -> None:
        """The controller, then the PUB in the controller's ZMQ context: one authenticator
        (``endpoint_curve_clients``) vets the clients of both."""
        circus = self.config.circus
        curve = _curve(self.config)
        self.controller = Controller(
            circus.endpoint, partial(dispatch, self), owner=circus.endpoint_owner, curve=curve
        )
        self.controller.start()
        self.pubsub = PubSub(circus.pubsub_endpoint, self.events, self.controller.context, curve)
        self.pubsub.start()

    async def _open_metrics(self) -> None:
        """Serve ``/metrics`` if ``[circus] metrics_endpoint`` is set. Imported only then:
        prometheus_client is the optional extra ``chapiteau[metrics]``."""
        endpoint = self.config.circus.metrics_endpoint
        if endpoint is None:
            return
        from chapiteau.supervisor.endpoints.metrics import MetricsServer

        self.metrics = MetricsServer(self, *endpoint)
        await self.metrics.open()

    async def _close_endpoints(self) -> None:
        """The PUB first: the controller terminates the context they share."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
        if self.controller is not None:
            await self.controller.close()
            self.controller = None

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
            if self.stopping:
                return
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
        if self.handover is not None:
            self.handover.pause()
        log.info("supervisor_stopping", shutdown_broker=shutdown_broker)
        if shutdown_broker and self.broker is not None:
            try:
                self.broker.shutdown()
            except BrokerError as exc:
                log.warning("broker_shutdown_failed", error=str(exc))
        await asyncio.gather(*(watcher.stop() for watcher in self.watchers.values()))
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def stop_watchers(self, watchers: Iterable[Watcher]) -> None:
        """Stop watchers concurrently, each with its own graceful timeout."""
        await asyncio.gather(*(watcher.stop() for watcher in watchers))

    async def reload_all(self, graceful: bool = True, sequential: bool = False) -> None:
        """Reload every watcher in priority order (SIGHUP, ``reload`` without name).

        A watcher whose new processes cannot start keeps its old ones and the
        others are still reloaded; then ReloadError names every failed watcher.
        """
        self.reopen_logs()
        first = True
        failures = []
        for watcher in self.by_priority():
            if not first and self.config.circus.warmup_delay > 0:
                await asyncio.sleep(self.config.circus.warmup_delay)
            first = False
            try:
                await watcher.reload(graceful, sequential)
            except ReloadError as exc:
                failures.append(f"{watcher.name}: {exc}")
        if failures:
            raise ReloadError("reload: " + "; ".join(failures))

    async def _reload_on_hup(self) -> None:
        # Each watcher logged its own reload_failed; the broker tells systemd the outcome.
        ok = True
        try:
            await self.reload_all()
        except ReloadError:
            ok = False
        if self.broker is not None:
            try:
                self.broker.reload_done(ok)
            except BrokerError as exc:
                log.warning("broker_reload_done_failed", error=str(exc))

    def watcher(self, config: WatcherConfig) -> Watcher:
        """A new Watcher of ``config`` (hooks imported, streams opened), not yet registered."""
        assert self._runtime is not None
        return Watcher(config, self._runtime)

    def add_watcher(self, config: WatcherConfig) -> Watcher:
        """The ``add`` command: register a new (stopped) watcher and announce it."""
        key = config.name.lower()
        if key in self.watchers:
            raise CommandError(f"{config.name!r} already exist", errno=5)
        watcher = self.watcher(config)
        self.watchers[key] = watcher
        self.added.add(key)
        self.events.publish(config.name, "add", {"time": time.time()})
        log.info("watcher_added", watcher=config.name)
        return watcher

    async def remove_watcher(
        self, watcher: Watcher, nostop: bool = False, announce: bool = True
    ) -> None:
        """The ``rm`` command: forget ``watcher``, stopping its processes unless ``nostop``.

        ``announce`` publishes the ``remove`` event (``rm`` does, reloadconfig does not).
        """
        key = watcher.name.lower()
        if self.watchers.get(key) is not watcher:
            return
        del self.watchers[key]
        self.added.discard(key)
        if announce:
            self.events.publish(watcher.name, "remove", {"time": time.time()})
        log.info("watcher_removed", watcher=watcher.name, nostop=nostop)
        if nostop:
            # Its processes run on unmanaged: their exits are only reaped.
            for pid in [pid for pid, owner in self.pids.items() if owner is watcher]:
                del self.pids[pid]
            return
        await watcher.stop()
        watcher.close_streams()

    async def reload_config(self, planned: asyncio.Future[None] | None = None) -> None:
        """``reloadconfig``: read the file again and switch to it; one reload at a time.

        Everything that can fail (ConfigError, BrokerError, HookError, ...) raises
        before anything changes; ``planned`` gets its result once the plan is made,
        before the watchers are stopped, replaced, resized and started by priority.
        """
        async with self._reload_lock:
            plan = self._plan_reload()
            if planned is not None:
                planned.set_result(None)
            await self._apply_reload(plan)

    def _plan_reload(self) -> ReloadPlan:
        """Read the file again, ask the broker for its sockets, and decide what changes.

        Everything that can fail is done here: a bad file or a hook that cannot
        be imported leaves the running configuration untouched.
        """
        new = load_config(self.config.path)
        old_by_name = {w.name.lower(): w for w in self.config.watchers}
        new_by_name = {w.name.lower(): w for w in new.watchers}
        plan = ReloadPlan(new)
        plan.removed = [
            self.watchers[key]
            for key in old_by_name
            if key not in new_by_name and key not in self.added and key in self.watchers
        ]
        try:
            for key, config in new_by_name.items():
                self._plan_watcher(plan, key, old_by_name.get(key), config)
            changed = self._reload_sockets(new, plan)
        except Exception:
            for watcher in plan.built():
                watcher.close_streams()
            raise
        touched = {w for w, _ in plan.replaced} | set(plan.removed)
        plan.restarted = [
            w
            for w in self.watchers.values()
            if w not in touched and set(self.sockets.names_for(w.config)) & changed
        ]
        self.config = new
        if self._runtime is not None:
            self._runtime.flapping = new.flapping
        self._apply_circus_options(new)
        return plan

    def _plan_watcher(
        self, plan: ReloadPlan, key: str, old: WatcherConfig | None, config: WatcherConfig
    ) -> None:
        """Add to ``plan`` what becomes of watcher ``key`` (``old``: its configuration in
        the file until now, None if it was not there)."""
        running = self.watchers.get(key)
        if running is None:
            plan.added.append(self.watcher(config))
            return
        added_live = key in self.added
        if not added_live and old == config:
            return
        if old is not None and _only_numprocesses_differs(old, config):
            plan.resized.append((running, config.numprocesses))
        elif not added_live and running.lifecycle.serving:
            plan.reconfigured.append((running, self.watcher(config)))
        else:
            plan.replaced.append((running, self.watcher(config)))

    def _reload_sockets(self, new: Config, plan: ReloadPlan) -> set[str]:
        """Let the broker re-read its sockets; take the new and changed ones."""
        if self.broker is None:
            return set()
        result = self.broker.reload_config()
        wanted = {s.name for s in new.sockets}
        fetch = [name for name in (*result.added, *result.changed) if name in wanted]
        received = self.broker.get_sockets(fetch)
        plan.old_sockets = self.sockets.replace(received, (*result.removed, *result.changed))
        return set(result.changed)

    def _apply_circus_options(self, config: Config) -> None:
        """[circus] values that can change live; the endpoints move after the reply."""
        circus = config.circus
        if circus.umask is not None:
            os.umask(circus.umask)
        if self.controller is not None:
            self.controller.owner = circus.endpoint_owner
            self.controller.rebind(circus.endpoint)
        if self.pubsub is not None:
            self.pubsub.rebind(circus.pubsub_endpoint)

    async def _apply_reload(self, plan: ReloadPlan) -> None:
        """Stop, replace, resize and start, by priority."""
        await asyncio.gather(*(self.remove_watcher(w, announce=False) for w in plan.removed))
        replacements = {old: new for old, new in plan.replaced}
        await self.stop_watchers(list(replacements))
        for old, new in plan.replaced:
            old.close_streams()
            self.added.discard(old.name.lower())
            self.watchers[new.name.lower()] = new
        for watcher in plan.added:
            self.watchers[watcher.name.lower()] = watcher
        resized = dict(plan.resized)
        reconfigured = dict(plan.reconfigured)
        starting = {*plan.added, *replacements.values(), *plan.restarted}
        for watcher in self.by_priority():
            if watcher in resized:
                await watcher.set_numprocesses(resized[watcher])
            elif watcher in reconfigured:
                reconfigured[watcher].close_streams()
                try:
                    await watcher.configure(reconfigured[watcher].config, reload=True, updated=0)
                except ReloadError as exc:
                    log.error("config_reload_kept_previous", watcher=watcher.name, error=str(exc))
            elif watcher in plan.restarted:
                await watcher.restart()
            elif watcher in starting and watcher.config.autostart:
                await watcher.start()
        for old_socket in plan.old_sockets:
            with contextlib.suppress(OSError):
                os.close(old_socket.fd)
        log.info(
            "config_reloaded",
            added=[w.name for w in plan.added],
            removed=[w.name for w in plan.removed],
            replaced=[w.name for w, _ in plan.replaced],
            reloaded=[w.name for w, _ in plan.reconfigured],
            resized=[w.name for w, _ in plan.resized],
        )

    def reopen_logs(self) -> None:
        for watcher in self.watchers.values():
            watcher.reopen_streams()
        log.info("logs_reopened")

    def _child_exited(self, pid: int, code: int | None) -> None:
        helper = self._helpers.pop(pid, None)
        if helper is not None:
            helper.set_result(code)
            return
        self.sampler.forget(pid)
        watcher = self.pids.pop(pid, None)
        if watcher is not None:
            watcher.process_exited(pid, code)

    def _orphan_reaped(self, pid: int, code: int) -> None:
        log.debug("orphan_reaped", pid=pid, exit_code=code)

    def _restore_doors(self) -> None:
        """Before any spawn (and after adoption, if any): the steering slots the adopted
        processes hold stay theirs; any other slot a previous supervisor filled (in connect
        mode too: the broker keeps the maps) is emptied."""
        for name, doors in self.sockets.doors.items():
            held = {
                slot
                for watcher in self.watchers.values()
                for process in watcher.processes.values()
                for door, slot in process.doors.items()
                if door is doors
            }
            try:
                doors.restore(held)
            except OSError as exc:
                log.warning("doors_not_restored", socket=name, error=str(exc))

    # -- generations: adoption and upgrade ---------------------------------------

    def _snapshot(self) -> Iterator[tuple[WatcherRecord, list[bytes]]]:
        return (watcher.record() for watcher in self.watchers.values())

    async def upgrade(self) -> int:
        """``upgrade``: check that the installed code starts on this config, then exit
        leaving every worker to the supervisor the broker starts next (same pids).
        CommandError, with the check's last line, when it would not start: nothing changes.
        Returns this supervisor's pid."""
        if self.handover is None:
            raise CommandError(
                "upgrade needs a supervisor started by the broker: in connect mode, restart "
                "the supervisor's service instead"
            )
        if self.stopping or self.handing_over:
            raise CommandError("the supervisor is already stopping")
        assert self._runtime is not None
        try:
            await check_installed_code(self._runtime.children, self._helpers)
        except UpgradeError as exc:
            raise CommandError(f"upgrade: {exc}") from None
        if self.stopping or self.handing_over:
            raise CommandError("the supervisor is already stopping")
        self.handing_over = True
        log.info("upgrade_checked", pid=os.getpid())
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        return os.getpid()

    async def _upgrade_on_signal(self) -> None:
        """SIGUSR2 (the broker forwards its own): ``upgrade``, the outcome in the log."""
        try:
            await self.upgrade()
        except CommandError as exc:
            log.error("upgrade_failed", error=exc.reason)

    def _hand_over(self) -> None:
        """The last snapshot, then tell the broker: it starts the next generation at once."""
        assert self.handover is not None and self.broker is not None
        self.handover.write()
        try:
            self.broker.handover()
        except BrokerError as exc:
            log.warning("handover_failed", error=str(exc))
        log.info("handed_over", processes=len(self.pids))


def _only_numprocesses_differs(old: WatcherConfig, new: WatcherConfig) -> bool:
    def without_count(config: WatcherConfig) -> WatcherConfig:
        options = {k: v for k, v in config.options.items() if k != "numprocesses"}
        return replace(config, numprocesses=0, options=options)

    return without_count(old) == without_count(new)


def _curve(config: Config) -> Curve | None:
    """The CURVE settings of [circus] ``endpoint_curve_secretkey`` / ``endpoint_curve_clients``."""
    options = config.circus.options
    secret = options.get(CURVE_SECRET_KEY, "").strip()
    if not secret:
        return None
    return Curve.load(secret, options.get(CURVE_CLIENTS, "").strip() or None)
