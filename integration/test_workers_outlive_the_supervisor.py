"""Workers outlive their supervisor: kill -9 or ``upgrade``, the next supervisor adopts them.

The broker keeps the dead supervisor's workers running (they became its
children) with their output pipes, and the next supervisor manages them
again: the same pids, their output still reaching the stream file. What the
new configuration no longer has is stopped, never left unmanaged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from chapiteau.supervisor.handover import POOL
from integration.harness import is_alive, wait_until

CTL = Path(sys.executable).parent / "chapiteauctl"
PING = """\
import os, signal, time
signal.signal(signal.SIGUSR1, lambda *_: print(f"ping from {os.getpid()}", flush=True))
print(f"started {os.getpid()}", flush=True)
while True:
    time.sleep(3600)
"""


def watchers(workdir: Path, extra: bool = True) -> str:
    (workdir / "ping.py").write_text(PING)
    (workdir / "ping.py").chmod(0o644)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)
    text = f"""
[watcher:web]
cmd = python3 {workdir}/ping.py
numprocesses = 2
graceful_timeout = 5
stdout_stream.class = FileStream
stdout_stream.filename = {logs}/web.log
"""
    if extra:
        text += f"\n[watcher:extra]\ncmd = python3 {workdir}/ping.py\ngraceful_timeout = 5\n"
    return text


def next_generation(daemon, generation: int) -> int:
    """The pid of supervisor number ``generation`` once it adopted and answers."""
    tree = daemon.tree
    pid = tree.wait_for("supervisor_started", where=lambda e: e["start"] == generation)[-1]["pid"]
    tree.wait_for("adopted", count=generation)
    wait_until(lambda: daemon.call("dstats").get("info", {}).get("pid") == pid)
    return pid


def pids_of(daemon, name: str) -> list[int]:
    return sorted(daemon.call("list", name=name)["pids"])


def killed_supervisor(daemon) -> tuple[list[int], int]:
    """kill -9 the supervisor; the web workers write while none exists. Returns their pids
    and the new supervisor's."""
    workers = sorted(daemon.tree.worker_pids("web", 2))
    log = daemon.tree.directory / "logs" / "web.log"
    # SIGUSR1 stops a worker that has not set its handler yet.
    wait_until(lambda: all(f"started {pid}\n" in log.read_text() for pid in workers))
    os.kill(daemon.tree.supervisor_pid(), signal.SIGKILL)
    for pid in workers:
        os.kill(pid, signal.SIGUSR1)
    return workers, next_generation(daemon, 2)


def test_after_kill_9_of_the_supervisor_the_same_workers_are_managed_again(daemon, workdir):
    web = daemon(watchers(workdir, extra=False))
    workers, _ = killed_supervisor(web)

    assert pids_of(web, "web") == workers
    assert all(is_alive(pid) for pid in workers)
    assert web.tree.events_named("adopted")[-1]["processes"] == 2
    log = workdir / "logs" / "web.log"
    wait_until(lambda: all(f"ping from {pid}\n" in log.read_text() for pid in workers))


def test_an_adopted_worker_that_dies_is_respawned_and_stop_stops_them(daemon, workdir):
    web = daemon(watchers(workdir, extra=False))
    workers, _ = killed_supervisor(web)

    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: workers[0] not in pids_of(web, "web") and len(pids_of(web, "web")) == 2)
    assert workers[1] in pids_of(web, "web")
    running = pids_of(web, "web")
    assert web.call("stop", name="web", waiting=True)["status"] == "ok"
    wait_until(lambda: not any(is_alive(pid) for pid in running))


def test_run_time_changes_and_an_operator_stop_survive_a_kill_9(daemon, workdir):
    web = daemon(watchers(workdir))
    assert web.call("incr", name="web", waiting=True)["numprocesses"] == 3
    assert web.call("stop", name="extra", waiting=True)["status"] == "ok"
    three = sorted(web.tree.worker_pids("web", 3))
    os.kill(web.tree.supervisor_pid(), signal.SIGKILL)
    next_generation(web, 2)

    assert pids_of(web, "web") == three
    assert web.call("status", name="extra")["status"] == "stopped"
    assert pids_of(web, "extra") == []


def test_workers_of_a_watcher_removed_while_the_supervisor_was_dead_are_stopped(daemon, workdir):
    web = daemon(watchers(workdir))
    extra = web.tree.worker_pids("extra", 1)
    web.rewrite_config(watchers(workdir, extra=False).lstrip())
    workers, _ = killed_supervisor(web)

    stopped = web.tree.wait_for("orphan_stopped", where=lambda e: e["pid"] == extra[0])
    assert stopped and not is_alive(extra[0])
    assert pids_of(web, "web") == workers


def ctl(daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTL), "--endpoint", daemon.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upgrade_hands_the_same_workers_to_a_new_supervisor(daemon, workdir):
    web = daemon(watchers(workdir, extra=False))
    workers = sorted(web.tree.worker_pids("web", 2))
    old = web.tree.supervisor_pid()

    result = ctl(web, "upgrade")

    new = next_generation(web, 2)
    assert result.returncode == 0, result
    assert result.stdout == f"upgraded: supervisor {new} (was {old})\n"
    assert pids_of(web, "web") == workers
    assert web.tree.events_named("supervisor_restart_scheduled")[-1]["delay"] == 0.0
    assert not web.tree.events_named("process_spawned", lambda e: e["pid"] not in workers)


def test_usr2_to_the_broker_upgrades_the_supervisor(daemon, workdir):
    web = daemon(watchers(workdir, extra=False))
    workers = sorted(web.tree.worker_pids("web", 2))

    os.kill(web.tree.pid, signal.SIGUSR2)

    next_generation(web, 2)
    assert web.tree.wait_for("supervisor_handed_over")
    assert pids_of(web, "web") == workers


def test_an_upgrade_whose_check_fails_changes_nothing(daemon, workdir):
    web = daemon(watchers(workdir, extra=False))
    workers = sorted(web.tree.worker_pids("web", 2))
    supervisor = web.tree.supervisor_pid()
    config = web.tree.config_path
    config.write_text(config.read_text().replace("numprocesses = 2", "numprocesses = lots"))

    result = ctl(web, "upgrade")

    assert result.returncode == 3, result
    assert "upgrade: the new supervisor would not start" in result.stderr
    assert "numprocesses: 'lots' is not an integer" in result.stderr
    assert web.call("dstats")["info"]["pid"] == supervisor
    assert pids_of(web, "web") == workers
    assert not web.tree.events_named("supervisor_started", lambda e: e["start"] == 2)


def test_pipes_made_ahead_do_not_pile_up_in_the_broker_across_generations(daemon, workdir):
    # A respawn fills the supervisor's pool of output pipes that the broker holds; the
    # next generation releases what a killed one left unused. Were they kept, each
    # generation would add most of a pool to the broker's fds.
    web = daemon(watchers(workdir, extra=False))

    def respawn_one() -> None:
        victim = pids_of(web, "web")[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in pids_of(web, "web") and len(pids_of(web, "web")) == 2)

    def broker_fds() -> int:
        return len(os.listdir(f"/proc/{web.tree.pid}/fd"))

    respawn_one()
    first = 0
    for generation in (2, 3, 4):
        os.kill(web.tree.supervisor_pid(), signal.SIGKILL)
        next_generation(web, generation)
        respawn_one()
        first = first or broker_fds()
    wait_until(lambda: broker_fds() < first + POOL // 2)
