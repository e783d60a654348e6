"""The life of one watcher and of its processes, as a pure state machine.

Events come in as method calls, with the time (the loop's monotonic clock)
passed by the caller; each returns the actions the driver
(`chapiteau.supervisor.watcher`) must carry out. Nothing here forks, signals,
sleeps, reads a clock or draws a random number, so every transition is tested
without processes (tests/test_lifecycle.py).

The watcher's phases::

    STOPPED --start--> STARTING --started--> ACTIVE
       |  on_demand, with sockets                 |  crash / spawn failure with a delay
       v                                          v
    WAITING_ON_DEMAND --connection--> STARTING  BACKING_OFF --timer--> ACTIVE
    any running phase --stop--> STOPPING --all gone--> STOPPED, or FAILED when the
    watcher gave up (spawn max_retry, crash-loop max_retry, a hook refused)
    STOPPED --adopted--> ACTIVE: a process the previous supervisor generation left
    runs on (no spawn); the start that follows tops the count up

A process's states; once it exits it leaves the table::

    STARTING --ready--> RUNNING --RELOADING=1--> RELOADING --READY=1--> RUNNING
       |                   |  STOPPING=1 (said by the process) --> EXITING
       |  ready_timeout    |  watchdog_sec without WATCHDOG=1
       +-------------------+--> FAILING (stopped; its exit is a crash)
    any state --the watcher stops it on purpose--> STOPPING (its exit is no crash)

Readiness. A process is ready (RUNNING) once it runs with ``readiness =
started`` (the default, Circus's behaviour), after ``ready_delay`` seconds
if set, or when it says ``READY=1`` with ``readiness = notify``. One that
is not ready within ``ready_timeout`` (notify) is a failed start: it is
stopped and its exit counts as a crash of its round (so the crash-loop
backoff below applies). With ``watchdog_sec``, a ready process that sends no
``WATCHDOG=1`` for that long is stopped and its exit is a crash. The timers
are armed per process (`ArmTimer`) and cancelled by the driver when the
process stops or exits: a watcher without these options arms none.

Crash-loop backoff. A watcher spawns its processes in rounds: the start, then
each respawn that brings the count back to ``numprocesses``. A round fails when
one of its processes dies sooner than ``window`` seconds after its spawn; the
other crashes of that round are part of the same failure. The delay before
the next respawn grows with consecutive failed rounds, never with the number
of processes that crashed, so a watcher of 8 processes backs off exactly as a
watcher of 1::

    failed rounds   1     2      3      4     ...  n
    delay           0 s   0.1 s  0.2 s  0.4 s ...  min(0.1 * 2 ** (n - 2), 60) s

A process that lived ``window`` seconds or more ends the streak. With
``[plugin:flapping] max_retry`` >= 0 the watcher gives up when its backoff
rounds (the failed rounds after the first) exceed it.

Reload. Old processes stop only for replacements that are ready: if a new
process cannot start or is not ready in time, the new ones stop, the old
ones keep serving and the reload fails with a message. ``max_replacing = N``
replaces N old processes at a time (``sequential``: 1), so the count of
ready processes never drops below the target. A singleton never runs twice, so its old process stops
first and a replacement that cannot start is retried after a backoff.
"""

from __future__ import annotations

import enum
import heapq
import signal
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chapiteau.supervisor.config import Flapping, WatcherConfig

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 60.0


def backoff(attempt: int) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...): 0.1 s doubling, at most 60 s."""
    return min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)


class Phase(enum.Enum):
    """Where a watcher is in its life; the value is its name in events and stats."""

    STOPPED = "stopped"
    WAITING_ON_DEMAND = "waiting_on_demand"
    STARTING = "starting"
    ACTIVE = "active"
    BACKING_OFF = "backing_off"
    STOPPING = "stopping"
    FAILED = "failed"

    @property
    def circus_status(self) -> str:
        """The word of Circus's ``status`` reply: stopped, starting, active or stopping."""
        return _CIRCUS_STATUS[self]


_CIRCUS_STATUS = {
    Phase.STOPPED: "stopped",
    Phase.WAITING_ON_DEMAND: "stopped",
    Phase.FAILED: "stopped",
    Phase.STARTING: "starting",
    Phase.ACTIVE: "active",
    Phase.BACKING_OFF: "active",
    Phase.STOPPING: "stopping",
}
RUNNING_PHASES = (Phase.STARTING, Phase.ACTIVE, Phase.BACKING_OFF)
"""The phases in which the watcher keeps its processes at the target count."""


class ProcessState(enum.Enum):
    STARTING = "starting"
    """It runs and is not ready yet."""
    RUNNING = "running"
    """Ready."""
    RELOADING = "reloading"
    """It said RELOADING=1: not ready until its next READY=1."""
    EXITING = "exiting"
    """It said STOPPING=1 on its own: not ready; its exit is still a crash."""
    FAILING = "failing"
    """It missed its ready_timeout or its watchdog: stopped, its exit is a crash."""
    STOPPING = "stopping"
    """The watcher stops it on purpose: its exit is no crash."""


class Timer(enum.Enum):
    """The per-process timers of readiness; the value is the option that sets it."""

    READY_DELAY = "ready_delay"
    READY_TIMEOUT = "ready_timeout"
    WATCHDOG = "watchdog_sec"


_DEAD_END = (ProcessState.FAILING, ProcessState.STOPPING)
"""States whose end is decided: the process only waits for its exit."""
_NOT_YET_READY = (ProcessState.STARTING, ProcessState.RELOADING)
_WATCHED = (ProcessState.RUNNING, ProcessState.RELOADING, ProcessState.EXITING)
"""States in which the watchdog runs (once ready, until the end is decided)."""
_FAILURE_REASONS = {Timer.READY_TIMEOUT: "not ready in time", Timer.WATCHDOG: "watchdog timeout"}


@dataclass(slots=True)
class Worker:
    """What the lifecycle knows of one process."""

    pid: int
    wid: int
    born: float
    """The loop time of its spawn."""
    crash_round: int
    """The watcher's round of spawns it belongs to."""
    state: ProcessState = ProcessState.STARTING
    status: str | None = None
    """The last ``STATUS=`` it sent."""
    failure: Timer | None = None
    """FAILING: the timer it missed."""


@dataclass(slots=True)
class Slot:
    """The history of one wid: its spawns since the watcher started, and its last exit."""

    spawns: int = 0
    last_exit: dict[str, Any] | None = None
    """``{"code": exit code (-N: killed by signal N), "reason": ...}``; the reason is
    ``stopped`` (the watcher stopped it: stop, reload, decr, max_age), ``exited too
    quickly`` (it died sooner than the flapping window after its spawn), ``not ready in
    time`` (ready_timeout), ``watchdog timeout`` or ``exited``."""

    @property
    def restarts(self) -> int:
        """The processes spawned in this wid after its first since the watcher started."""
        return max(0, self.spawns - 1)


_EMPTY_SLOT_STATE = {
    Phase.STOPPED: "stopped",
    Phase.WAITING_ON_DEMAND: "waiting_on_demand",
    Phase.STARTING: "starting",
    Phase.ACTIVE: "starting",
    Phase.BACKING_OFF: "backing_off",
    Phase.STOPPING: "stopped",
    Phase.FAILED: "failed",
}


# -- actions: what the driver carries out ------------------------------------


@dataclass(frozen=True)
class Reconcile:
    """Stop `Lifecycle.extra` processes and spawn `Lifecycle.missing` ones (under the lock)."""


@dataclass(frozen=True)
class StopProcesses:
    """Stop these processes gracefully (signal, graceful_timeout, SIGKILL)."""

    pids: tuple[int, ...]


@dataclass(frozen=True)
class SignalProcesses:
    pids: tuple[int, ...]
    signum: int


@dataclass(frozen=True)
class ArmRespawn:
    """Call `Lifecycle.timer_fired` at loop time ``at`` (replacing a pending one)."""

    at: float


@dataclass(frozen=True)
class CancelRespawn:
    pass


@dataclass(frozen=True)
class ArmExpiry:
    """max_age: call `Lifecycle.expired` for ``pid`` at loop time ``at``."""

    pid: int
    at: float


@dataclass(frozen=True)
class ArmTimer:
    """Call `Lifecycle.timer_expired` for ``pid`` and ``timer`` at loop time ``at``
    (replacing that timer of ``pid`` if armed)."""

    pid: int
    timer: Timer
    at: float


@dataclass(frozen=True)
class CancelTimer:
    pid: int
    timer: Timer


@dataclass(frozen=True)
class Readiness:
    """Wake what waits for ``pid`` to be ready: it is (``why_not`` None) or never will be."""

    pid: int
    why_not: str | None = None


@dataclass(frozen=True)
class StopFailed:
    """Stop ``pid`` now, without the lock (stop_signal to its group, graceful_timeout,
    SIGKILL): it failed its readiness or watchdog, and its exit is a crash."""

    pid: int


@dataclass(frozen=True)
class WatchSockets:
    """on_demand: call `Lifecycle.connection` when a listening socket is readable."""


@dataclass(frozen=True)
class UnwatchSockets:
    pass


@dataclass(frozen=True)
class StartOnDemand:
    """Run the start (with its hooks) because a client connected."""


@dataclass(frozen=True)
class Halt:
    """Stop the watcher (with its hooks); ``reason`` set: it gave up and ends FAILED."""

    reason: str | None


@dataclass(frozen=True)
class Publish:
    """A chapiteau event on the watcher's own topic (``chapiteau.NAME.EVENT``)."""

    event: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Replace:
    """Reload: spawn ``count`` processes; once they all run stop ``old``. With
    ``stop_first`` (a singleton), ``old`` stops before the spawn."""

    old: tuple[int, ...]
    count: int
    stop_first: bool = False


@dataclass(frozen=True)
class Start:
    """Reload of a stopped watcher: a plain start."""


Action = (
    Reconcile
    | StopProcesses
    | SignalProcesses
    | ArmRespawn
    | CancelRespawn
    | ArmExpiry
    | ArmTimer
    | CancelTimer
    | Readiness
    | StopFailed
    | WatchSockets
    | UnwatchSockets
    | StartOnDemand
    | Halt
    | Publish
    | Replace
    | Start
)


class WidPool:
    """The wids in use and the lowest free one, from 1 (as in Circus), in O(log n) a spawn."""

    def __init__(self) -> None:
        self._used: Counter[int] = Counter()
        self._free: list[int] = []
        """A heap of wids that were free when pushed (those taken since are popped lazily)."""
        self._high = 0
        """Every wid up to this one has been taken once or is in ``_free``."""

    def lowest_free(self) -> int:
        while self._free and self._used[self._free[0]]:
            heapq.heappop(self._free)
        return self._free[0] if self._free else self._high + 1

    def take(self, wid: int) -> None:
        for skipped in range(self._high + 1, wid):
            heapq.heappush(self._free, skipped)
        self._high = max(self._high, wid)
        self._used[wid] += 1

    def give_back(self, wid: int) -> None:
        self._used[wid] -= 1
        if self._used[wid] <= 0:
            del self._used[wid]
            heapq.heappush(self._free, wid)


class Lifecycle:
    """One watcher's phase, its processes and its failure counts; events in, actions out."""

    def __init__(self, config: WatcherConfig) -> None:
        self.config = config
        self.phase = Phase.STOPPED
        self.workers: dict[int, Worker] = {}
        self.wids = WidPool()
        """The wids of ``workers``: the lowest free one without a pass over them all."""
        self.failed_rounds = 0
        """Consecutive failed rounds of spawns; a process spawned now belongs to this round."""
        self.spawn_failures = 0
        """Consecutive spawns that did not run."""
        self.retry_at: float | None = None
        """BACKING_OFF: the loop time of the next attempt."""
        self.failure: str | None = None
        """FAILED (or STOPPING towards it): why the watcher gave up."""
        self.restarts = 0
        """Processes that exited without being asked to and were to be replaced (ever)."""
        self.slots: dict[int, Slot] = {}
        """By wid: restarts and last exit, for ``status`` verbose."""
        self.stop_pending = False
        """A stop waits for the driver's lock (a start may hold it for thousands of
        spawns): nothing more is spawned meanwhile. Set by the driver, cleared by `stop`."""

    # -- what the driver asks ------------------------------------------------

    @property
    def keeps_count(self) -> bool:
        """True while processes are kept at the target count (spawning is allowed)."""
        return self.phase in RUNNING_PHASES and not self.stop_pending

    @property
    def serving(self) -> bool:
        """Started and not stopping (Circus's "active")."""
        return self.phase in (Phase.ACTIVE, Phase.BACKING_OFF)

    @property
    def running(self) -> list[int]:
        """The processes not being stopped."""
        return [pid for pid, w in self.workers.items() if w.state not in _DEAD_END]

    def ready(self) -> int:
        """How many processes are ready."""
        return sum(w.state is ProcessState.RUNNING for w in self.workers.values())

    def missing(self) -> int:
        return max(0, self.config.numprocesses - len(self.workers))

    def extra(self) -> list[int]:
        """The oldest processes beyond the target count."""
        count = len(self.workers) - self.config.numprocesses
        if count <= 0:
            return []
        oldest = sorted(self.workers.values(), key=lambda w: w.born)
        return [w.pid for w in oldest[:count]]

    def next_wid(self) -> int:
        """The lowest wid in use by nobody, from 1 (as in Circus)."""
        return self.wids.lowest_free()

    def describe(self, now: float) -> dict[str, Any]:
        """The phase and what goes with it (``status`` verbose, the ``watcher_state`` log)."""
        described: dict[str, Any] = {"state": self.phase.value}
        if self.phase is Phase.BACKING_OFF and self.retry_at is not None:
            described["retry_in"] = round(max(0.0, self.retry_at - now), 3)
            described["failed_rounds"] = self.failed_rounds
            described["spawn_failures"] = self.spawn_failures
        if self.failure is not None:
            described["reason"] = self.failure
        return described

    def processes(self, now: float) -> list[dict[str, Any]]:
        """One entry per wid (the target's and any in use), in wid order: pid (None when
        the slot is empty), state, uptime, restarts and last exit (``status`` verbose)."""
        by_wid = {w.wid: w for w in self.workers.values()}
        wids = sorted(set(range(1, self.config.numprocesses + 1)) | set(by_wid))
        entries = []
        for wid in wids:
            worker = by_wid.get(wid)
            slot = self.slots.get(wid, Slot())
            entries.append(
                {
                    "wid": wid,
                    "pid": worker.pid if worker else None,
                    "state": worker.state.value if worker else _EMPTY_SLOT_STATE[self.phase],
                    "uptime": round(now - worker.born, 3) if worker else None,
                    "restarts": slot.restarts,
                    "last_exit": slot.last_exit,
                    "ready": worker.state is ProcessState.RUNNING if worker else None,
                    "status": worker.status if worker else None,
                }
            )
        return entries

    # -- start and stop ------------------------------------------------------

    def start(self, demanded: bool = False, has_sockets: bool = True) -> list[Action]:
        """``start`` (or the first connection with ``demanded``): top up, wait, or start."""
        if self.keeps_count:
            return [Reconcile()]
        self.failure = None
        if self.config.on_demand and not demanded and has_sockets:
            if self.phase is Phase.WAITING_ON_DEMAND:
                return []
            self.phase = Phase.WAITING_ON_DEMAND
            return [WatchSockets()]
        self.phase = Phase.STARTING
        self.failed_rounds = 0
        self.spawn_failures = 0
        for slot in self.slots.values():
            slot.spawns = 0
        return [Reconcile()]

    def start_refused(self) -> None:
        """``before_start`` returned false."""
        self.phase = Phase.STOPPED

    def started(self) -> list[Action]:
        """The start's first round of spawns is over."""
        if self.phase is Phase.STARTING:
            self.phase = Phase.ACTIVE
        return []

    def connection(self) -> list[Action]:
        """on_demand: a client connected to one of the watcher's sockets."""
        if self.phase is not Phase.WAITING_ON_DEMAND:
            return []
        return [UnwatchSockets(), StartOnDemand()]

    def stop(self) -> list[Action]:
        """``stop`` (or a Halt): stop every process."""
        self.stop_pending = False
        actions: list[Action] = []
        if self.phase is Phase.WAITING_ON_DEMAND:
            actions.append(UnwatchSockets())
            self.phase = Phase.STOPPED
        if self.phase in (Phase.STOPPED, Phase.FAILED) and not self.workers:
            return actions
        if self.phase is Phase.BACKING_OFF:
            actions.append(CancelRespawn())
        self.phase = Phase.STOPPING
        self.retry_at = None
        return [*actions, StopProcesses(tuple(self.stopping_all()))]

    def stopped(self) -> list[Action]:
        """Every process of the stop is gone."""
        self.phase = Phase.STOPPED if self.failure is None else Phase.FAILED
        return []

    def stopping_all(self) -> list[int]:
        pids = list(self.workers)
        for pid in pids:
            self.stopping_one(pid)
        return pids

    def stopping_one(self, pid: int) -> None:
        """The driver stops ``pid`` on purpose: its exit is not a crash."""
        worker = self.workers.get(pid)
        if worker is not None:
            worker.state = ProcessState.STOPPING

    def resize(self, numprocesses: int) -> list[Action]:
        """incr/decr/set numprocesses: the new target, not below 0."""
        self.config = replace(self.config, numprocesses=max(0, numprocesses))
        return [Reconcile()] if self.serving else []

    # -- spawns ----------------------------------------------------------------

    def spawned(self, pid: int, wid: int, now: float, jitter: int = 0) -> list[Action]:
        """``pid`` runs; ``jitter`` is the random part of its max_age (0..max_age_variance)."""
        worker = self.workers[pid] = Worker(pid, wid, now, self.failed_rounds)
        self.wids.take(wid)
        self.slots.setdefault(wid, Slot()).spawns += 1
        self.spawn_failures = 0
        config = self.config
        actions: list[Action] = []
        if config.max_age > 0:
            actions.append(ArmExpiry(pid, now + config.max_age + jitter))
        if config.readiness == "notify":
            return actions + self._ready_timer(worker, now)
        if config.ready_delay > 0:
            return [*actions, ArmTimer(pid, Timer.READY_DELAY, now + config.ready_delay)]
        return actions + self._ready(worker, now)

    # -- readiness ---------------------------------------------------------------

    @property
    def tracks_readiness(self) -> bool:
        """Readiness is more than "it runs": the watcher publishes ``ready`` events."""
        return self.config.readiness != "started" or self.config.ready_delay > 0

    def notified(self, pid: int, fields: Mapping[str, str], now: float) -> list[Action]:
        """``pid`` (or a process of its tree) sent an sd_notify message with ``fields``."""
        worker = self.workers.get(pid)
        if worker is None:
            return []
        actions: list[Action] = []
        status = fields.get("STATUS")
        if status is not None and status != worker.status:
            worker.status = status
            actions.append(Publish("status", {"pid": pid, "wid": worker.wid, "status": status}))
        if worker.state in _DEAD_END:
            return actions
        if fields.get("STOPPING") == "1":
            worker.state = ProcessState.EXITING
            actions.append(self._not_ready(worker, "stopping"))
        elif fields.get("RELOADING") == "1" and worker.state is ProcessState.RUNNING:
            worker.state = ProcessState.RELOADING
            actions += [self._not_ready(worker, "reloading"), *self._ready_timer(worker, now)]
        if fields.get("READY") == "1" and worker.state in _NOT_YET_READY:
            actions += self._ready(worker, now)
        watchdog = fields.get("WATCHDOG")
        if watchdog == "trigger" and worker.state is not ProcessState.STARTING:
            return actions + self._fail(worker, Timer.WATCHDOG)
        if watchdog == "1" and self._watched(worker):
            actions.append(ArmTimer(pid, Timer.WATCHDOG, now + self.config.watchdog_sec))
        return actions

    def timer_expired(self, pid: int, timer: Timer, now: float) -> list[Action]:
        """A timer that `ArmTimer` armed for ``pid`` fired."""
        worker = self.workers.get(pid)
        if worker is None:
            return []
        if timer is Timer.READY_DELAY and worker.state is ProcessState.STARTING:
            return self._ready(worker, now)
        if timer is Timer.READY_TIMEOUT and worker.state in _NOT_YET_READY:
            return self._fail(worker, timer)
        if timer is Timer.WATCHDOG and self._watched(worker):
            return self._fail(worker, timer)
        return []

    def _watched(self, worker: Worker) -> bool:
        """The watchdog runs for a process once it was ready, until its end is decided."""
        return self.config.watchdog_sec > 0 and worker.state in _WATCHED

    def _ready_timer(self, worker: Worker, now: float) -> list[Action]:
        if self.config.ready_timeout <= 0:
            return []
        return [ArmTimer(worker.pid, Timer.READY_TIMEOUT, now + self.config.ready_timeout)]

    def _ready(self, worker: Worker, now: float) -> list[Action]:
        worker.state = ProcessState.RUNNING
        actions: list[Action] = [Readiness(worker.pid)]
        if self.config.readiness == "notify" and self.config.ready_timeout > 0:
            actions.append(CancelTimer(worker.pid, Timer.READY_TIMEOUT))
        if self.config.watchdog_sec > 0:
            actions.append(ArmTimer(worker.pid, Timer.WATCHDOG, now + self.config.watchdog_sec))
        if self.tracks_readiness:
            actions.append(Publish("ready", {"pid": worker.pid, "wid": worker.wid}))
        return actions

    def _not_ready(self, worker: Worker, reason: str) -> Publish:
        return Publish("not_ready", {"pid": worker.pid, "wid": worker.wid, "reason": reason})

    def _fail(self, worker: Worker, timer: Timer) -> list[Action]:
        worker.state = ProcessState.FAILING
        worker.failure = timer
        after = getattr(self.config, timer.value)
        event = "ready_timeout" if timer is Timer.READY_TIMEOUT else "watchdog_timeout"
        payload = {"pid": worker.pid, "wid": worker.wid, "after": after}
        why_not = f"process {worker.pid}: {_FAILURE_REASONS[timer]} ({timer.value} = {after})"
        return [Publish(event, payload), Readiness(worker.pid, why_not), StopFailed(worker.pid)]

    def adopted(
        self, pid: int, wid: int, born: float, spawns: int = 1, now: float | None = None
    ) -> list[Action]:
        """``pid``, spawned at loop time ``born`` by the previous supervisor generation,
        runs on: it fills slot ``wid`` without a spawn, and the watcher is active (a
        start then tops it up to ``numprocesses`` or stops the extra ones). ``spawns``:
        the slot's count of spawns recorded by that generation. It served until now, so
        it is ready: its watchdog, if any, runs from ``now`` (default ``born``)."""
        worker = Worker(pid, wid, born, self.failed_rounds)
        self.workers[pid] = worker
        self.wids.take(wid)
        slot = self.slots.setdefault(wid, Slot())
        slot.spawns = max(slot.spawns, spawns, 1)
        if self.phase in (Phase.STOPPED, Phase.FAILED, Phase.STARTING):
            self.phase = Phase.ACTIVE
            self.failure = None
        actions = self._ready(worker, born if now is None else now)
        if self.config.max_age > 0:
            actions.append(ArmExpiry(pid, born + self.config.max_age))
        return actions

    def spawn_failed(self, error: str, errno: int | None) -> list[Action]:
        """A process could not be spawned (any flow): count it and say so."""
        self.spawn_failures += 1
        payload = {"error": error, "errno": errno, "attempt": self.spawn_failures}
        return [Publish("spawn_failed", payload)]

    def respawn_failed(self, now: float, error: str) -> list[Action]:
        """Keeping the count, a spawn failed (after `spawn_failed`): retry later, or give up."""
        if 0 <= self.config.max_retry < self.spawn_failures:
            return self._give_up(f"spawn failed {self.spawn_failures} times: {error}")
        return self._respawn_after(now, backoff(self.spawn_failures))

    def spawn_refused(self, reason: str) -> list[Action]:
        """``before_spawn``/``after_spawn`` refused while keeping the count: stop."""
        return self._give_up(reason)

    # -- exits and timers ------------------------------------------------------

    def exited(
        self, pid: int, now: float, flapping: Flapping, code: int | None = None
    ) -> list[Action]:
        """``pid`` exited with ``code`` (-N: killed by signal N): forget it and decide what
        replaces it (``flapping``: the configuration's crash-loop policy)."""
        worker = self.workers.pop(pid, None)
        if worker is None:
            return []
        self.wids.give_back(worker.wid)
        was = worker.state
        quick = now - worker.born < flapping.window or worker.failure is Timer.READY_TIMEOUT
        if was is ProcessState.STOPPING:
            reason = "stopped"
        elif worker.failure is not None:
            reason = _FAILURE_REASONS[worker.failure]
        elif quick:
            reason = "exited too quickly"
        else:
            reason = "exited"
        self.slots.setdefault(worker.wid, Slot()).last_exit = {"code": code, "reason": reason}
        if was is ProcessState.STOPPING or not self.keeps_count:
            return []
        if not self.config.respawn:
            if not self.workers and self.phase is Phase.ACTIVE:
                return [Halt(None)]
            return []
        self.restarts += 1
        return self._after_crash(worker, now, flapping, quick)

    def _after_crash(
        self, worker: Worker, now: float, flapping: Flapping, quick: bool
    ) -> list[Action]:
        """``quick``: a failed start (it died within the window, or was never ready)."""
        if not quick:
            self.failed_rounds = 0
            return self._respawn_after(now, 0.0)
        new_failure = worker.crash_round >= self.failed_rounds
        if new_failure:
            self.failed_rounds += 1
        retries = self.failed_rounds - 1
        if new_failure and 0 <= flapping.max_retry < retries:
            stopped = Publish("crash_loop_stopped", {"failed_rounds": self.failed_rounds})
            return [stopped, *self._give_up(f"crash loop: {self.failed_rounds} failed rounds")]
        if not new_failure and self.phase is Phase.BACKING_OFF:
            return []  # the respawn of this round is already due
        delay = backoff(retries) if retries else 0.0
        actions: list[Action] = []
        if new_failure and delay > 0:
            payload = {"failed_rounds": self.failed_rounds, "delay": delay}
            actions.append(Publish("crash_loop_backoff", payload))
        return actions + self._respawn_after(now, delay)

    def _respawn_after(self, now: float, delay: float) -> list[Action]:
        if delay <= 0:
            cancel: list[Action] = [CancelRespawn()] if self.phase is Phase.BACKING_OFF else []
            if self.phase is Phase.BACKING_OFF:
                self.phase = Phase.ACTIVE
                self.retry_at = None
            return [*cancel, Reconcile()]
        if self.phase in (Phase.STARTING, Phase.ACTIVE):
            self.phase = Phase.BACKING_OFF
        self.retry_at = now + delay
        return [ArmRespawn(self.retry_at)]

    def timer_fired(self) -> list[Action]:
        """The respawn timer fired: bring the count back."""
        if self.phase is not Phase.BACKING_OFF:
            return []
        self.retry_at = None
        self.phase = Phase.ACTIVE
        return [Reconcile()]

    def _give_up(self, reason: str) -> list[Action]:
        self.failure = reason
        return [Halt(reason)]

    # -- max_age and reload ----------------------------------------------------

    def expired(self, pid: int) -> list[Action]:
        """max_age of ``pid`` is reached: a replacement first (a singleton stops first)."""
        worker = self.workers.get(pid)
        if worker is None or worker.state is not ProcessState.RUNNING:
            return []
        if not self.serving:
            return []
        return [Replace((pid,), 1, stop_first=self.config.singleton)]

    def replacement_failed(
        self, old: tuple[int, ...], now: float, jitter: int, error: str
    ) -> list[Action]:
        """max_age: the replacement of ``old`` did not start; it serves on and expires later
        (a singleton's old process is gone: retried as a failed respawn)."""
        if self.config.singleton:
            return self.respawn_failed(now, error)
        return [
            ArmExpiry(pid, now + self.config.max_age + jitter) for pid in old if pid in self.workers
        ]

    def reload(self, sequential: bool) -> list[Action]:
        """``reload``: replace every process, new ones first (Circus ``reload``)."""
        old = tuple(sorted(self.running, key=lambda pid: self.workers[pid].born))
        if not self.keeps_count:
            return [Start()]
        if self.config.send_hup:
            return [SignalProcesses(old, signal.SIGHUP)]
        if self.config.singleton:
            return [Replace((pid,), 1, stop_first=True) for pid in old]
        at_once = 1 if sequential else self.config.max_replacing
        if at_once <= 0 or not old:
            return [Replace(old, self.config.numprocesses)]
        batches = [old[first : first + at_once] for first in range(0, len(old), at_once)]
        short = max(0, self.config.numprocesses - len(old))
        replaces = [Replace(batch, len(batch)) for batch in batches]
        replaces[-1] = replace(replaces[-1], count=replaces[-1].count + short)
        return replaces

    def reload_failed(self, error: str, serving: int, now: float) -> tuple[str, list[Action]]:
        """A reload's new process did not start: the message for the caller, and what next.

        A singleton's old process is already gone: it is started again after a backoff.
        """
        if self.config.singleton:
            delay = backoff(max(1, self.spawn_failures))
            return (
                f"a new process cannot start ({error}); a singleton's old process stops "
                f"first, so it is started again in {delay} s",
                self._respawn_after(now, delay),
            )
        serving_on = f"{serving} running process(es) keep serving"
        return f"a new process cannot start ({error}); {serving_on}", []
