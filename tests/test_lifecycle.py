"""Tests for chapiteau.supervisor.lifecycle: every transition, driven by events alone.

No process, no loop, no clock: the tests pass the time and read the actions.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from typing import Any

import pytest

from chapiteau.supervisor.config import Flapping, WatcherConfig
from chapiteau.supervisor.lifecycle import (
    ArmExpiry,
    ArmRespawn,
    ArmTimer,
    CancelRespawn,
    CancelTimer,
    Halt,
    Lifecycle,
    Phase,
    ProcessState,
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
    WidPool,
    backoff,
)

FLAPPING = Flapping(window=1.0, max_retry=-1)


def config(numprocesses: int = 1, **options: Any) -> WatcherConfig:
    return WatcherConfig(name="web", cmd="run", numprocesses=numprocesses, **options)


class Driver:
    """Plays the asyncio driver: spawns pids on Reconcile, records the other actions."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.next_pid = 100
        self.now = 0.0
        self.actions: list[Any] = []

    def spawn_missing(self) -> list[int]:
        pids = []
        while self.lifecycle.keeps_count and self.lifecycle.missing():
            self.next_pid += 1
            self.actions += self.lifecycle.spawned(
                self.next_pid, self.lifecycle.next_wid(), self.now
            )
            pids.append(self.next_pid)
        return pids

    def start(self) -> list[int]:
        assert self.lifecycle.start() == [Reconcile()]
        pids = self.spawn_missing()
        self.lifecycle.started()
        return pids

    def crash_all(self, pids: list[int], after: float = 0.01) -> list[Any]:
        """Every process of ``pids`` dies ``after`` seconds; the actions answered."""
        self.now += after
        answered = []
        for pid in pids:
            answered += self.lifecycle.exited(pid, self.now, FLAPPING)
        return answered


def started(numprocesses: int = 1, **options: Any) -> tuple[Driver, list[int]]:
    driver = Driver(Lifecycle(config(numprocesses, **options)))
    return driver, driver.start()


def backoff_delays(numprocesses: int, rounds: int) -> list[object]:
    """Crash every process of each round: "spawn" per respawn, the delay of each backoff."""
    driver, pids = started(numprocesses)
    sequence: list[object] = ["spawn"]
    while len(sequence) < 2 * rounds:
        actions = driver.crash_all(pids)
        sequence += [a.payload["delay"] for a in actions if isinstance(a, Publish)]
        arm = [a for a in actions if isinstance(a, ArmRespawn)]
        if arm:
            driver.now = arm[-1].at
            assert driver.lifecycle.phase is Phase.BACKING_OFF
            assert driver.lifecycle.timer_fired() == [Reconcile()]
        pids = driver.spawn_missing()
        sequence.append("spawn")
    return sequence


# -- start, stop, on demand -----------------------------------------------------


def test_start_spawns_the_target_count_and_becomes_active() -> None:
    driver, pids = started(3)
    assert len(pids) == 3
    assert driver.lifecycle.phase is Phase.ACTIVE
    assert sorted(w.wid for w in driver.lifecycle.workers.values()) == [1, 2, 3]
    assert driver.lifecycle.start() == [Reconcile()]


def test_a_stop_during_a_start_spawns_nothing_more() -> None:
    driver = Driver(Lifecycle(config(1000)))
    assert driver.lifecycle.start() == [Reconcile()]
    driver.actions += driver.lifecycle.spawned(101, 1, driver.now)
    driver.actions += driver.lifecycle.spawned(102, 2, driver.now)
    driver.next_pid = 102
    driver.lifecycle.stop_pending = True
    assert driver.spawn_missing() == []
    assert driver.crash_all([102]) == []
    assert driver.lifecycle.stop() == [StopProcesses((101,))]
    assert driver.lifecycle.stop_pending is False


def test_before_start_refusal_leaves_it_stopped() -> None:
    lifecycle = Lifecycle(config())
    lifecycle.start()
    lifecycle.start_refused()
    assert lifecycle.phase is Phase.STOPPED


def test_stop_stops_every_process_then_is_stopped() -> None:
    driver, pids = started(2)
    assert driver.lifecycle.stop() == [StopProcesses(tuple(pids))]
    assert driver.lifecycle.phase is Phase.STOPPING
    assert driver.lifecycle.phase.circus_status == "stopping"
    assert driver.crash_all(pids) == []
    driver.lifecycle.stopped()
    assert driver.lifecycle.phase is Phase.STOPPED
    assert driver.lifecycle.stop() == []


def test_on_demand_waits_then_starts_at_the_first_connection() -> None:
    lifecycle = Lifecycle(config(on_demand=True))
    assert lifecycle.start() == [WatchSockets()]
    assert lifecycle.phase is Phase.WAITING_ON_DEMAND
    assert lifecycle.phase.circus_status == "stopped"
    assert lifecycle.start() == []
    assert lifecycle.connection() == [UnwatchSockets(), StartOnDemand()]
    assert lifecycle.start(demanded=True) == [Reconcile()]
    assert lifecycle.phase is Phase.STARTING


def test_on_demand_without_sockets_starts_at_once() -> None:
    lifecycle = Lifecycle(config(on_demand=True))
    assert lifecycle.start(has_sockets=False) == [Reconcile()]
    assert lifecycle.phase is Phase.STARTING


def test_stop_while_waiting_on_demand_stops_watching() -> None:
    lifecycle = Lifecycle(config(on_demand=True))
    lifecycle.start()
    assert lifecycle.stop() == [UnwatchSockets()]
    assert lifecycle.phase is Phase.STOPPED
    assert lifecycle.connection() == []


# -- crashes and backoff --------------------------------------------------------


def test_crash_backoff_is_the_same_for_1_and_8_processes() -> None:
    one = backoff_delays(1, 4)
    assert one == ["spawn", "spawn", 0.1, "spawn", 0.2, "spawn", 0.4, "spawn"]
    assert backoff_delays(8, 4) == one


def test_backoff_doubles_up_to_60_seconds() -> None:
    assert [backoff(n) for n in (1, 2, 3, 10, 11, 50)] == [0.1, 0.2, 0.4, 51.2, 60.0, 60.0]


def test_first_crash_respawns_at_once_later_ones_back_off() -> None:
    driver, pids = started()
    assert driver.crash_all(pids) == [Reconcile()]
    pids = driver.spawn_missing()
    actions = driver.crash_all(pids)
    assert actions == [
        Publish("crash_loop_backoff", {"failed_rounds": 2, "delay": 0.1}),
        ArmRespawn(driver.now + 0.1),
    ]
    assert driver.lifecycle.phase is Phase.BACKING_OFF
    assert driver.lifecycle.phase.circus_status == "active"
    assert driver.lifecycle.describe(driver.now)["state"] == "backing_off"


def test_processes_report_each_wid_restarts_and_last_exit() -> None:
    driver, pids = started(2)
    driver.now += 0.01
    driver.lifecycle.exited(pids[0], driver.now, FLAPPING, 3)
    driver.spawn_missing()
    driver.now += 0.01
    driver.lifecycle.exited(pids[1], driver.now + 5.0, FLAPPING, -9)
    assert driver.lifecycle.phase is Phase.ACTIVE
    one, two = driver.lifecycle.processes(driver.now)
    assert (one["wid"], one["state"], one["restarts"]) == (1, "running", 1)
    assert one["last_exit"] == {"code": 3, "reason": "exited too quickly"}
    assert (two["wid"], two["pid"], two["state"], two["uptime"]) == (2, None, "starting", None)
    assert two["last_exit"] == {"code": -9, "reason": "exited"}


def test_processes_of_a_watcher_backing_off_are_backing_off_and_stopped_ones_say_so() -> None:
    driver, pids = started()
    driver.crash_all(pids)
    driver.crash_all(driver.spawn_missing())
    [slot] = driver.lifecycle.processes(driver.now)
    assert (slot["pid"], slot["state"], slot["restarts"]) == (None, "backing_off", 1)
    driver.lifecycle.timer_fired()
    pids = driver.spawn_missing()
    driver.lifecycle.stop()
    driver.lifecycle.exited(pids[0], driver.now, FLAPPING, 0)
    driver.lifecycle.stopped()
    [slot] = driver.lifecycle.processes(driver.now)
    assert (slot["state"], slot["last_exit"]) == ("stopped", {"code": 0, "reason": "stopped"})
    driver.start()
    assert driver.lifecycle.processes(driver.now)[0]["restarts"] == 0


def test_a_process_that_lived_the_window_ends_the_streak() -> None:
    driver, pids = started()
    driver.crash_all(pids)
    pids = driver.spawn_missing()
    driver.crash_all(pids)
    driver.lifecycle.timer_fired()
    pids = driver.spawn_missing()
    assert driver.crash_all(pids, after=5.0) == [Reconcile()]
    assert driver.lifecycle.failed_rounds == 0


def test_stop_during_backoff_cancels_the_respawn() -> None:
    driver, pids = started(2)
    driver.crash_all(pids)
    pids = driver.spawn_missing()
    driver.crash_all(pids[:1])
    assert driver.lifecycle.phase is Phase.BACKING_OFF
    assert driver.lifecycle.stop() == [CancelRespawn(), StopProcesses((pids[1],))]
    driver.lifecycle.stopped()
    assert driver.lifecycle.phase is Phase.STOPPED
    assert driver.lifecycle.timer_fired() == []


def test_crash_loop_max_retry_gives_up_and_ends_failed() -> None:
    driver, pids = started()
    flapping = Flapping(window=1.0, max_retry=1)
    answers = []
    for _ in range(3):
        answers = driver.lifecycle.exited(pids[0], driver.now, flapping)
        if driver.lifecycle.timer_fired() or any(isinstance(a, Reconcile) for a in answers):
            pids = driver.spawn_missing()
    assert answers[0] == Publish("crash_loop_stopped", {"failed_rounds": 3})
    assert isinstance(answers[1], Halt) and answers[1].reason
    driver.lifecycle.stop()
    driver.lifecycle.stopped()
    assert driver.lifecycle.phase is Phase.FAILED
    assert driver.lifecycle.phase.circus_status == "stopped"
    assert "crash loop" in driver.lifecycle.describe(0.0)["reason"]
    assert driver.lifecycle.start() == [Reconcile()]
    assert driver.lifecycle.failure is None


def test_without_respawn_the_last_exit_stops_the_watcher() -> None:
    driver, pids = started(2, respawn=False)
    assert driver.crash_all(pids[:1]) == []
    assert driver.crash_all(pids[1:]) == [Halt(None)]


def test_an_exit_of_a_process_being_stopped_is_no_crash() -> None:
    driver, pids = started()
    driver.lifecycle.stopping_one(pids[0])
    assert driver.lifecycle.workers[pids[0]].state is ProcessState.STOPPING
    assert driver.crash_all(pids) == []
    assert driver.lifecycle.failed_rounds == 0


def test_restarts_count_the_exits_it_replaces_not_the_ones_it_asked_for() -> None:
    driver, pids = started(3)
    driver.lifecycle.stopping_one(pids[0])
    driver.crash_all(pids, after=5.0)
    assert driver.lifecycle.restarts == 2
    driver.crash_all(driver.spawn_missing())
    assert driver.lifecycle.restarts == 5


def test_restarts_do_not_count_exits_without_respawn() -> None:
    driver, pids = started(2, respawn=False)
    driver.crash_all(pids)
    assert driver.lifecycle.restarts == 0


# -- spawn failures ---------------------------------------------------------------


def test_spawn_failures_back_off_then_give_up_after_max_retry() -> None:
    lifecycle = Lifecycle(config(max_retry=2))
    lifecycle.start()
    for attempt, delay in ((1, 0.1), (2, 0.2)):
        published = lifecycle.spawn_failed("no such file", 2)
        assert published == [
            Publish("spawn_failed", {"error": "no such file", "errno": 2, "attempt": attempt})
        ]
        assert lifecycle.respawn_failed(10.0, "no such file") == [ArmRespawn(10.0 + delay)]
        assert lifecycle.phase is Phase.BACKING_OFF
        assert lifecycle.timer_fired() == [Reconcile()]
    lifecycle.spawn_failed("no such file", 2)
    [halt] = lifecycle.respawn_failed(10.0, "no such file")
    assert halt == Halt("spawn failed 3 times: no such file")


def test_a_refused_spawn_halts() -> None:
    lifecycle = Lifecycle(config())
    lifecycle.start()
    assert lifecycle.spawn_refused("before_spawn hook refused the spawn") == [
        Halt("before_spawn hook refused the spawn")
    ]


def test_resize_reconciles_only_when_serving() -> None:
    driver, _ = started(2)
    assert driver.lifecycle.resize(4) == [Reconcile()]
    assert driver.lifecycle.missing() == 2
    assert driver.lifecycle.resize(-3) == [Reconcile()]
    assert driver.lifecycle.config.numprocesses == 0
    assert len(driver.lifecycle.extra()) == 2
    assert Lifecycle(config()).resize(3) == []


# -- reload -----------------------------------------------------------------------


def test_reload_replaces_all_processes_new_ones_first() -> None:
    driver, pids = started(3)
    assert driver.lifecycle.reload(sequential=False) == [Replace(tuple(pids), 3)]
    assert driver.lifecycle.reload(sequential=True) == [Replace((pid,), 1) for pid in pids]


def test_reload_with_failed_spawns_keeps_the_old_processes() -> None:
    driver, pids = started(3)
    driver.lifecycle.reload(sequential=False)
    driver.lifecycle.spawn_failed("no such file", 2)
    message, actions = driver.lifecycle.reload_failed("no such file", 3, driver.now)
    assert (
        message == "a new process cannot start (no such file); 3 running process(es) keep serving"
    )
    assert actions == []
    assert sorted(driver.lifecycle.running) == pids
    assert driver.lifecycle.phase is Phase.ACTIVE


def test_reload_of_a_stopped_watcher_starts_it() -> None:
    assert Lifecycle(config()).reload(sequential=False) == [Start()]


def test_reload_with_send_hup_signals_the_processes() -> None:
    driver, pids = started(2, send_hup=True)
    assert driver.lifecycle.reload(False) == [SignalProcesses(tuple(pids), signal.SIGHUP)]


def test_singleton_reload_stops_first_and_retries_after_a_failed_spawn() -> None:
    driver, pids = started(1, singleton=True)
    assert driver.lifecycle.reload(False) == [Replace(tuple(pids), 1, stop_first=True)]
    driver.lifecycle.stopping_one(pids[0])
    driver.crash_all(pids)
    driver.lifecycle.spawn_failed("no such file", 2)
    message, actions = driver.lifecycle.reload_failed("no such file", 1, 7.0)
    assert "singleton" in message and "0.1 s" in message
    assert actions == [ArmRespawn(7.1)]
    assert driver.lifecycle.timer_fired() == [Reconcile()]
    assert driver.spawn_missing()


# -- max_age ------------------------------------------------------------------------


def test_max_age_arms_an_expiry_per_process() -> None:
    lifecycle = Lifecycle(config(max_age=10, max_age_variance=5))
    lifecycle.start()
    assert lifecycle.spawned(7, 1, now=100.0, jitter=3) == [ArmExpiry(7, 113.0), Readiness(7)]


def test_max_age_replaces_first_a_singleton_stops_first() -> None:
    driver, pids = started(2, max_age=10)
    assert driver.lifecycle.expired(pids[0]) == [Replace((pids[0],), 1)]
    single, [pid] = started(1, max_age=10, singleton=True)
    assert single.lifecycle.expired(pid) == [Replace((pid,), 1, stop_first=True)]


def test_max_age_whose_replacement_failed_expires_again_later() -> None:
    driver, pids = started(2, max_age=10)
    actions = driver.lifecycle.replacement_failed((pids[0],), 50.0, 1, "no such file")
    assert actions == [ArmExpiry(pids[0], 61.0)]
    assert pids[0] in driver.lifecycle.running


def test_max_age_of_a_singleton_whose_replacement_failed_retries_later() -> None:
    driver, [pid] = started(1, max_age=10, singleton=True)
    driver.lifecycle.stopping_one(pid)
    driver.crash_all([pid])
    driver.lifecycle.spawn_failed("no such file", 2)
    actions = driver.lifecycle.replacement_failed((pid,), 50.0, 1, "no such file")
    assert actions == [ArmRespawn(50.1)]
    assert driver.lifecycle.phase is Phase.BACKING_OFF


def test_max_age_of_a_stopping_watcher_does_nothing() -> None:
    driver, pids = started(1, max_age=10)
    driver.lifecycle.stop()
    assert driver.lifecycle.expired(pids[0]) == []


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_has_a_circus_status(phase: Phase) -> None:
    assert phase.circus_status in ("stopped", "starting", "active", "stopping")


def test_config_changes_are_read_at_the_next_event() -> None:
    driver, _ = started(1)
    driver.lifecycle.config = replace(driver.lifecycle.config, numprocesses=2)
    assert driver.lifecycle.missing() == 1


# -- readiness ----------------------------------------------------------------------


def test_a_started_process_is_ready_at_once_without_a_ready_event() -> None:
    lifecycle = Lifecycle(config())
    lifecycle.start()
    assert lifecycle.spawned(7, 1, now=5.0) == [Readiness(7)]
    assert lifecycle.workers[7].state is ProcessState.RUNNING
    assert lifecycle.processes(6.0)[0]["ready"] is True


def test_ready_delay_counts_a_process_ready_once_it_ran_that_long() -> None:
    lifecycle = Lifecycle(config(ready_delay=2))
    lifecycle.start()
    assert lifecycle.spawned(7, 1, now=5.0) == [ArmTimer(7, Timer.READY_DELAY, 7.0)]
    assert lifecycle.processes(6.0)[0]["ready"] is False
    assert lifecycle.processes(6.0)[0]["state"] == "starting"
    assert lifecycle.ready() == 0
    assert lifecycle.timer_expired(7, Timer.READY_DELAY, 7.0) == [
        Readiness(7),
        Publish("ready", {"pid": 7, "wid": 1}),
    ]
    assert lifecycle.ready() == 1


def test_notify_process_is_starting_until_it_says_ready() -> None:
    lifecycle = Lifecycle(config(readiness="notify", ready_timeout=10))
    lifecycle.start()
    assert lifecycle.spawned(7, 1, now=5.0) == [ArmTimer(7, Timer.READY_TIMEOUT, 15.0)]
    assert lifecycle.notified(7, {"STATUS": "loading"}, 6.0) == [
        Publish("status", {"pid": 7, "wid": 1, "status": "loading"})
    ]
    assert lifecycle.workers[7].state is ProcessState.STARTING
    assert lifecycle.notified(7, {"READY": "1"}, 7.0) == [
        Readiness(7),
        CancelTimer(7, Timer.READY_TIMEOUT),
        Publish("ready", {"pid": 7, "wid": 1}),
    ]
    entry = lifecycle.processes(8.0)[0]
    assert (entry["state"], entry["ready"], entry["status"]) == ("running", True, "loading")
    assert lifecycle.timer_expired(7, Timer.READY_TIMEOUT, 15.0) == []


def test_a_process_not_ready_in_time_is_stopped_and_its_exit_is_a_failed_start() -> None:
    driver = Driver(Lifecycle(config(readiness="notify", ready_timeout=10)))
    driver.lifecycle.start()
    [pid] = driver.spawn_missing()
    driver.lifecycle.started()
    actions = driver.lifecycle.timer_expired(pid, Timer.READY_TIMEOUT, 10.0)
    assert actions == [
        Publish("ready_timeout", {"pid": pid, "wid": 1, "after": 10}),
        Readiness(pid, f"process {pid}: not ready in time (ready_timeout = 10)"),
        StopFailed(pid),
    ]
    assert driver.lifecycle.workers[pid].state is ProcessState.FAILING
    # It lived longer than the flapping window, yet it never served: a failed round.
    assert driver.lifecycle.exited(pid, 11.0, FLAPPING, -15) == [Reconcile()]
    assert driver.lifecycle.failed_rounds == 1
    assert driver.lifecycle.slots[1].last_exit == {"code": -15, "reason": "not ready in time"}
    [again] = driver.spawn_missing()
    driver.lifecycle.timer_expired(again, Timer.READY_TIMEOUT, 21.0)
    actions = driver.lifecycle.exited(again, 22.0, FLAPPING, -15)
    assert actions[0] == Publish("crash_loop_backoff", {"failed_rounds": 2, "delay": 0.1})


def test_a_watchdog_keep_alive_rearms_a_silent_process_is_stopped_as_a_crash() -> None:
    lifecycle = Lifecycle(config(readiness="notify", ready_timeout=0, watchdog_sec=3))
    lifecycle.start()
    assert lifecycle.spawned(7, 1, now=0.0) == []
    assert lifecycle.notified(7, {"WATCHDOG": "1"}, 0.5) == []
    assert ArmTimer(7, Timer.WATCHDOG, 4.0) in lifecycle.notified(7, {"READY": "1"}, 1.0)
    assert lifecycle.notified(7, {"WATCHDOG": "1"}, 2.0) == [ArmTimer(7, Timer.WATCHDOG, 5.0)]
    actions = lifecycle.timer_expired(7, Timer.WATCHDOG, 5.0)
    assert Publish("watchdog_timeout", {"pid": 7, "wid": 1, "after": 3}) in actions
    assert StopFailed(7) in actions
    assert lifecycle.notified(7, {"WATCHDOG": "1"}, 5.5) == []
    lifecycle.phase = Phase.ACTIVE
    assert lifecycle.exited(7, 9.0, FLAPPING, -9) == [Reconcile()]
    assert lifecycle.slots[1].last_exit == {"code": -9, "reason": "watchdog timeout"}
    assert lifecycle.failed_rounds == 0


def test_watchdog_trigger_stops_the_process_at_once() -> None:
    lifecycle = Lifecycle(config(watchdog_sec=3))
    lifecycle.start()
    lifecycle.spawned(7, 1, now=0.0)
    assert StopFailed(7) in lifecycle.notified(7, {"WATCHDOG": "trigger"}, 1.0)


def test_reloading_makes_a_process_not_ready_until_its_next_ready() -> None:
    lifecycle = Lifecycle(config(readiness="notify", ready_timeout=10))
    lifecycle.start()
    lifecycle.spawned(7, 1, now=0.0)
    lifecycle.notified(7, {"READY": "1"}, 1.0)
    assert lifecycle.notified(7, {"RELOADING": "1"}, 2.0) == [
        Publish("not_ready", {"pid": 7, "wid": 1, "reason": "reloading"}),
        ArmTimer(7, Timer.READY_TIMEOUT, 12.0),
    ]
    assert lifecycle.ready() == 0
    assert lifecycle.processes(3.0)[0]["state"] == "reloading"
    assert Readiness(7) in lifecycle.notified(7, {"READY": "1"}, 3.0)
    assert lifecycle.ready() == 1


def test_stopping_said_by_the_process_is_not_ready_and_its_exit_still_a_crash() -> None:
    lifecycle = Lifecycle(config(readiness="notify"))
    lifecycle.start()
    lifecycle.spawned(7, 1, now=0.0)
    lifecycle.notified(7, {"READY": "1"}, 1.0)
    lifecycle.phase = Phase.ACTIVE
    assert lifecycle.notified(7, {"STOPPING": "1", "READY": "1"}, 2.0) == [
        Publish("not_ready", {"pid": 7, "wid": 1, "reason": "stopping"})
    ]
    assert lifecycle.processes(3.0)[0]["state"] == "exiting"
    assert lifecycle.exited(7, 9.0, FLAPPING, 0) == [Reconcile()]


def test_messages_of_a_process_being_stopped_change_nothing_but_its_status() -> None:
    lifecycle = Lifecycle(config(readiness="notify"))
    lifecycle.start()
    lifecycle.spawned(7, 1, now=0.0)
    lifecycle.stopping_one(7)
    assert lifecycle.notified(7, {"READY": "1", "STATUS": "bye"}, 1.0) == [
        Publish("status", {"pid": 7, "wid": 1, "status": "bye"})
    ]
    assert lifecycle.workers[7].state is ProcessState.STOPPING
    assert lifecycle.notified(8, {"READY": "1"}, 1.0) == []


def test_max_replacing_reloads_in_batches() -> None:
    driver, pids = started(5, max_replacing=2)
    assert driver.lifecycle.reload(sequential=False) == [
        Replace(tuple(pids[0:2]), 2),
        Replace(tuple(pids[2:4]), 2),
        Replace(tuple(pids[4:5]), 1),
    ]
    assert driver.lifecycle.reload(sequential=True) == [Replace((pid,), 1) for pid in pids]


def test_a_reload_replaces_the_processes_not_yet_ready_too() -> None:
    driver = Driver(Lifecycle(config(2, readiness="notify")))
    pids = driver.start()
    assert driver.lifecycle.reload(sequential=False) == [Replace(tuple(pids), 2)]


# -- adoption: processes the previous supervisor generation left --------------------------


def test_an_adopted_process_fills_its_slot_without_a_spawn() -> None:
    lifecycle = Lifecycle(config(numprocesses=2))
    assert lifecycle.adopted(500, 2, born=-40.0, spawns=3) == [Readiness(500)]
    assert lifecycle.phase is Phase.ACTIVE
    assert lifecycle.running == [500]
    assert lifecycle.missing() == 1
    assert lifecycle.next_wid() == 1
    entry = lifecycle.processes(0.0)[1]
    assert (entry["pid"], entry["uptime"], entry["restarts"]) == (500, 40.0, 2)


def test_the_start_after_an_adoption_tops_up_without_hooks_or_a_new_round() -> None:
    lifecycle = Lifecycle(config(numprocesses=3))
    lifecycle.adopted(500, 1, born=0.0)
    assert lifecycle.start() == [Reconcile()]
    assert lifecycle.phase is Phase.ACTIVE
    assert lifecycle.missing() == 2


def test_adopted_processes_beyond_the_target_count_are_the_extra_ones() -> None:
    lifecycle = Lifecycle(config(numprocesses=1))
    lifecycle.adopted(500, 1, born=-10.0)
    lifecycle.adopted(501, 2, born=-5.0)
    assert lifecycle.extra() == [500]


def test_an_adopted_process_that_exits_with_an_unknown_status_is_respawned() -> None:
    lifecycle = Lifecycle(config(numprocesses=1))
    lifecycle.adopted(500, 1, born=-100.0)
    assert lifecycle.exited(500, 0.0, FLAPPING, code=None) == [Reconcile()]
    assert lifecycle.slots[1].last_exit == {"code": None, "reason": "exited"}


def test_an_adopted_process_is_ready_and_its_watchdog_runs_from_the_adoption() -> None:
    # It served under the previous supervisor: a reload must not wait for a READY=1 it
    # already sent, and its keep-alives are expected from now on.
    lifecycle = Lifecycle(config(numprocesses=1, readiness="notify", watchdog_sec=5))
    actions = lifecycle.adopted(500, 1, born=-50.0, now=2.0)
    assert Readiness(500) in actions
    assert ArmTimer(500, Timer.WATCHDOG, 7.0) in actions
    assert lifecycle.workers[500].state is ProcessState.RUNNING


def test_an_adopted_process_keeps_its_max_age_from_its_spawn() -> None:
    lifecycle = Lifecycle(config(numprocesses=1, max_age=60))
    assert lifecycle.adopted(500, 1, born=-50.0) == [Readiness(500), ArmExpiry(500, 10.0)]


def test_the_next_wid_is_the_lowest_free_one_whatever_the_order() -> None:
    pool = WidPool()
    assert pool.lowest_free() == 1
    for wid in (1, 2, 3):
        pool.take(wid)
    assert pool.lowest_free() == 4
    pool.give_back(2)
    pool.give_back(1)
    assert pool.lowest_free() == 1
    pool.take(1)
    assert pool.lowest_free() == 2
    pool.take(7)  # adopted: wids 4 to 6 were never used
    assert pool.lowest_free() == 2
    pool.take(2)
    assert pool.lowest_free() == 4
    pool.take(3)  # a reload runs two processes in one wid for a while
    pool.give_back(3)
    assert pool.lowest_free() == 4
