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
