"""graceful_timeout: a worker that ignores its stop signal is killed when the timeout expires."""

from __future__ import annotations

from pathlib import Path

from integration.harness import is_alive

CONFIG = """
[broker]
user = nobody

[watcher:stubborn]
cmd = sh stubborn.sh
graceful_timeout = 1

[watcher:obedient]
cmd = sleep 1000
graceful_timeout = 600
"""


def start(chapiteau, workdir: Path):
    (workdir / "stubborn.sh").write_text("trap '' TERM\nwhile :; do sleep 1; done\n")
    (workdir / "stubborn.sh").chmod(0o644)
    return chapiteau(CONFIG)


def test_worker_ignoring_sigterm_gets_sigkill_after_graceful_timeout(chapiteau, workdir):
    tree = start(chapiteau, workdir)
    [stubborn] = tree.worker_pids("stubborn", 1)

    assert tree.stop() == 0

    [escalated] = tree.wait_for("process_kill_escalated", where=lambda e: e["pid"] == stubborn)
    assert escalated["after"] == 1
    reaped = tree.wait_for("process_reaped", where=lambda e: e["pid"] == stubborn)
    assert reaped[0]["exit_code"] == -9
    assert not is_alive(stubborn)


def test_worker_obeying_sigterm_exits_without_waiting_for_the_timeout(chapiteau, workdir):
    # graceful_timeout = 600 exceeds the harness's stop timeout: waiting for it would fail.
    tree = start(chapiteau, workdir)
    [obedient] = tree.worker_pids("obedient", 1)

    assert tree.stop() == 0

    reaped = tree.wait_for("process_reaped", where=lambda e: e["pid"] == obedient)
    assert reaped[0]["exit_code"] == -15
    assert not tree.events_named("process_kill_escalated", lambda e: e["pid"] == obedient)
