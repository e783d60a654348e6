"""Stopping chapiteau stops every process a worker started, however it tried to escape.

The supervisor itself must leave nothing behind: the broker's last-resort
orphan handling (``orphan_signalled``) must not be needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chapiteau.supervisor.children.process_tree import descendants
from integration.harness import is_alive, wait_until

CONFIG = """
[broker]
user = nobody

[watcher:tree]
cmd = sh tree.sh
graceful_timeout = 1
"""

TREES = {
    "background_child": "sleep 1000 &\nsleep 1000\n",
    "child_ignoring_sigterm": "sh -c 'trap \"\" TERM; sleep 1000' &\nsleep 1000\n",
    "child_in_its_own_session": "setsid sleep 1000 &\nsleep 1000\n",
    "child_in_own_session_ignoring_sigterm": (
        "setsid sh -c 'trap \"\" TERM; sleep 1000' &\nsleep 1000\n"
    ),
}


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("script", sorted(TREES))
def test_sigterm_leaves_no_process_of_the_worker_tree(chapiteau, workdir: Path, script: str):
    (workdir / "tree.sh").write_text(TREES[script])
    (workdir / "tree.sh").chmod(0o644)
    tree = chapiteau(CONFIG)
    [worker] = tree.worker_pids("tree", 1)
    # Both sleeps running means every trap is set and every setsid is done.
    wait_until(lambda: sum(command(pid) == "sleep" for pid in descendants(worker)) == 2)
    members = [worker, *descendants(worker)]

    assert tree.stop() == 0

    assert [pid for pid in members if is_alive(pid)] == []
    assert not tree.events_named("orphan_signalled")


FORKS_AS_IT_EXITS = "trap 'sh late.sh & exit 0' TERM\nsleep 1000 &\nwait\n"
LATE = "trap '' TERM\nexec sleep 1000\n"


def test_stop_reaches_what_the_worker_forked_as_it_exited(chapiteau, workdir: Path):
    """On SIGTERM the worker forks a child that ignores SIGTERM, and exits: that child
    was never listed, is re-parented to the supervisor, and lives in the worker's
    group. The stop finds it there, waits graceful_timeout for it, then kills it."""
    for name, script in (("tree.sh", FORKS_AS_IT_EXITS), ("late.sh", LATE)):
        (workdir / name).write_text(script)
        (workdir / name).chmod(0o644)
    tree = chapiteau(CONFIG)
    [worker] = tree.worker_pids("tree", 1)
    wait_until(lambda: any(command(pid) == "sleep" for pid in descendants(worker)))

    assert tree.stop() == 0

    [escalated] = tree.events_named("process_kill_escalated")
    assert escalated["pid"] == worker and escalated["left"]
    assert [pid for pid in escalated["left"] if is_alive(pid)] == []
    assert not tree.events_named("orphan_signalled")
