"""Tests for chapiteau.supervisor.children.process_tree: real process trees on a real loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from chapiteau.supervisor.children import process_tree
from chapiteau.supervisor.children.child_exit import become_subreaper
from chapiteau.supervisor.children.process_tree import (
    OrphanSearch,
    ProcessTree,
    children,
    descendants,
    group_and_session,
    parent_of,
    start_time,
)
from tests.forked import in_child

TIMEOUT = 5.0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def command(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()


def escaped_sleeps(leader: int) -> list[int]:
    """Descendants of ``leader`` running sleep outside its process group."""
    return [
        pid
        for pid in descendants(leader)
        if command(pid) == "sleep" and (group_and_session(pid) or (leader, 0))[0] != leader
    ]


def start_tree(script: str) -> subprocess.Popen:
    # A process group of its own in this session, as the supervisor starts a worker.
    leader = subprocess.Popen(["sh", "-c", script], process_group=0)
    deadline = time.monotonic() + TIMEOUT
    while len(descendants(leader.pid)) < 2 or (
        "setsid" in script and not escaped_sleeps(leader.pid)
    ):
        assert time.monotonic() < deadline, "the tree did not grow"
        time.sleep(0.005)
    return leader


def test_children_lists_more_than_a_page_of_pids():
    """/proc/PID/task/TID/children gives at most a page (about 700 pids) per read."""
    count = 1000
    parent = subprocess.Popen(
        ["sh", "-c", f"i=0; while [ $i -lt {count} ]; do sleep 100 & i=$((i+1)); done; wait"],
        process_group=0,
    )
    try:
        deadline = time.monotonic() + 20
        while len(found := children(parent.pid)) < count:
            assert time.monotonic() < deadline, f"{len(found)} children listed"
            time.sleep(0.05)
        assert len(found) == count
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_descendants_lists_grandchildren_parents_first():
    leader = start_tree("sh -c 'sleep 100' & wait")
    try:
        child, grandchild = descendants(leader.pid)
        assert descendants(child) == [grandchild]
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def tree_of(leader: int) -> ProcessTree:
    """The tree of a live ``leader``, its descendants listed."""
    tree = ProcessTree(leader, OrphanSearch(()))
    asyncio.run(tree.refresh(leader_alive=True))
    return tree


def test_signal_reaches_a_descendant_that_left_the_group():
    leader = start_tree("setsid sleep 100 & sleep 100")
    tree = tree_of(leader.pid)
    members = descendants(leader.pid)
    try:
        tree.signal(signal.SIGKILL, leader_alive=True)
        leader.wait(TIMEOUT)
        assert asyncio.run(tree.wait_members(TIMEOUT))
        assert not any(alive(pid) for pid in members)
    finally:
        tree.close()


def test_wait_members_reports_a_member_that_outlives_the_timeout():
    leader = start_tree("setsid sh -c 'trap \"\" TERM; sleep 100' & sleep 100")
    tree = tree_of(leader.pid)
    try:
        tree.signal(signal.SIGTERM, leader_alive=True)
        leader.wait(TIMEOUT)
        assert not asyncio.run(tree.wait_members(0.2))
        assert tree.alive()
    finally:
        tree.signal(signal.SIGKILL, leader_alive=False)
        asyncio.run(tree.wait_members(TIMEOUT))
        tree.close()


COUNT_SIGNALS = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
open(sys.argv[1] + ".ready", "w").close()
signal.sigwait([signal.SIGRTMIN])
count = 1
while signal.sigtimedwait([signal.SIGRTMIN], 1.0):
    count += 1
open(sys.argv[1], "w").write(str(count))
"""


def test_each_process_gets_the_signal_once_in_or_out_of_the_group(tmp_path):
    """Real-time signals queue instead of merging, so a second delivery would be counted."""
    script = tmp_path / "count.py"
    script.write_text(COUNT_SIGNALS)
    python = f"{sys.executable} {script}"
    leader = subprocess.Popen(
        ["sh", "-c", f"{python} {tmp_path}/in & setsid {python} {tmp_path}/out & wait"],
        process_group=0,
    )
    try:
        for name in ("in", "out"):
            wait_for_file(tmp_path / f"{name}.ready")
        tree = tree_of(leader.pid)
        try:
            tree.signal(signal.SIGRTMIN, leader_alive=True)
            assert asyncio.run(tree.wait_members(TIMEOUT))
            assert [(tmp_path / name).read_text() for name in ("in", "out")] == ["1", "1"]
        finally:
            tree.close()
    finally:
        # Whatever failed, nothing is left waiting for a signal.
        for pid in [*descendants(leader.pid), leader.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leader.wait(TIMEOUT)


def wait_for_file(path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def test_start_time_and_parent_come_from_proc() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"/proc/{child.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        assert start_time(child.pid) == int(fields[19])
        assert parent_of(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()
    assert start_time(child.pid) is None and parent_of(child.pid) is None
    assert parent_of(os.getpid()) == os.getppid()


def count_our_children_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, one entry per read of this process's list of children."""
    reads: list[int] = []
    listed = process_tree.children

    def counted(pid: int) -> list[int]:
        if pid == os.getpid():
            reads.append(pid)
        return listed(pid)

    monkeypatch.setattr(process_tree, "children", counted)
    return reads


def test_one_orphan_search_serves_every_tree_that_asks_before_it_runs(monkeypatch):
    """Exits of a burst share one read of this process's children; a later ask reads again
    (what it finds must postdate its leader's exit)."""
    reads = count_our_children_reads(monkeypatch)

    async def burst_then_one() -> list[int]:
        search = OrphanSearch(())
        await asyncio.gather(*(search.in_group(group) for group in range(1, 101)))
        burst = len(reads)
        await search.in_group(1)
        return [burst, len(reads)]

    assert asyncio.run(burst_then_one()) == [1, 2]


def test_a_tree_finds_its_group_re_parented_to_us_once_the_leader_exited():
    """The leader's child, never listed, outlives it: re-parented to this process (a child
    subreaper, as the supervisor is), it is found in the leader's group, and the tree
    signals it and waits for it. Run in a child: a subreaper stays one."""

    def scenario() -> str:
        become_subreaper()
        leader = subprocess.Popen(["sh", "-c", "sleep 100 & exit 0"], process_group=0)
        leader.wait(TIMEOUT)
        orphans = children(os.getpid())
        tree = ProcessTree(leader.pid, OrphanSearch(()))
        try:
            asyncio.run(tree.refresh(leader_alive=False))
            found = tree.alive()
            tree.signal(signal.SIGKILL, leader_alive=False)
            gone = asyncio.run(tree.wait_members(TIMEOUT))
        finally:
            tree.close()
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return repr((len(orphans), found == orphans, gone))

    assert in_child(scenario) == (0, repr((1, True, True)))
