"""An adopted worker goes on being heard on its NOTIFY_SOCKET: kill -9 and ``upgrade``.

A worker keeps for life the NOTIFY_SOCKET address it was started with. The
next supervisor generation listens on that same address, so the adopted
worker's ``WATCHDOG=1`` keep-alives still arrive (its watchdog does not
restart it) and a ``STATUS=`` it sends later shows in ``status -v``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from integration.harness import is_alive, wait_until
from integration.test_readiness import notify_worker, status_verbose, watcher
from integration.test_workers_outlive_the_supervisor import ctl, next_generation, pids_of

WATCHDOG_SEC = 2


def outlives_its_watchdog(app, worker: int) -> None:
    """Wait 3 times watchdog_sec, then check that the worker is still the watcher's only one."""
    time.sleep(3 * WATCHDOG_SEC + 1)
    assert pids_of(app, "w") == [worker] and is_alive(worker)
    assert not app.tree.events_named("watchdog_timeout")


def test_an_adopted_workers_keep_alives_reach_the_next_supervisor(daemon, workdir: Path):
    options = {"readiness": "notify", "watchdog_sec": WATCHDOG_SEC, "graceful_timeout": 5}
    # READY=1 at once, then WATCHDOG=1 every watchdog_sec / 4.
    app = daemon(watcher(notify_worker(workdir, "0"), **options))
    [ready] = app.tree.wait_for("ready")
    worker = ready["pid"]

    os.kill(app.tree.supervisor_pid(), signal.SIGKILL)
    next_generation(app, 2)
    outlives_its_watchdog(app, worker)

    result = ctl(app, "upgrade")
    assert result.returncode == 0, result
    next_generation(app, 3)
    outlives_its_watchdog(app, worker)

    os.kill(worker, signal.SIGUSR1)
    wait_until(lambda: f"told by {worker}" in status_verbose(app))
    assert len(app.tree.events_named("notify_socket_reopened")) == 2
