"""A worker that cannot start is a logged spawn error that stops only its own watcher.

In Circus an error after fork (setuid EPERM, a bad rlimit) wedges the watcher
in ``starting`` and the watchers after it never start (Circus issue #1157).
"""

from __future__ import annotations

import errno

import pytest

FAILURES = {
    "missing_program": ("cmd = /nonexistent/program", errno.ENOENT, "No such file or directory"),
    "uid_root_as_nobody": ("cmd = sleep 1000\nuid = root", errno.EPERM, "Operation not permitted"),
    "rlimit_above_hard_limit": (
        "cmd = sleep 1000\nrlimit_nofile = 1099511627776",
        errno.EPERM,
        "Operation not permitted",
    ),
}


def config(failure: str) -> str:
    return f"""
[broker]
user = nobody

[watcher:broken]
{FAILURES[failure][0]}
priority = 10
max_retry = 2

[watcher:good]
cmd = sleep 1000
priority = 1
"""


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_spawn_error_is_logged_with_errno_and_text(chapiteau, failure: str):
    tree = chapiteau(config(failure))
    [first] = tree.wait_for("spawn_failed", where=lambda e: e["watcher"] == "broken")
    _, code, text = FAILURES[failure]
    assert first["errno"] == code
    assert text in first["error"]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_spawn_errors_count_against_max_retry_then_stop_the_watcher(chapiteau, failure: str):
    tree = chapiteau(config(failure))
    tree.wait_for("watcher_stopped", where=lambda e: e["watcher"] == "broken")
    assert [e["attempt"] for e in tree.events_named("spawn_failed")] == [1, 2, 3]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_lower_priority_watcher_still_starts(chapiteau, failure: str):
    tree = chapiteau(config(failure))
    assert tree.worker_pids("good", 1)
    tree.wait_for("watcher_started", where=lambda e: e["watcher"] == "good")


def test_a_watcher_retrying_forever_does_not_delay_the_others(chapiteau):
    tree = chapiteau(config("missing_program").replace("max_retry = 2", "max_retry = -1"))
    tree.wait_for("watcher_started", where=lambda e: e["watcher"] == "good")
    assert tree.worker_pids("good", 1)
    tree.wait_for("spawn_failed", where=lambda e: e["watcher"] == "broken", count=3)
    assert tree.stop() == 0
