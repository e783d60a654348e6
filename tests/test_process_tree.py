"""Tests for chapiteau.supervisor.process_tree: real process trees on a real loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from chapiteau.supervisor.process_tree import ProcessTree, descendants, group_and_session

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
    """Descendants of ``leader`` running sleep in a session of their own."""
    return [
        pid
        for pid in descendants(leader)
        if command(pid) == "sleep" and (group_and_session(pid) or (0, leader))[1] != leader
    ]


def start_tree(script: str) -> subprocess.Popen:
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while len(descendants(leader.pid)) < 2 or (
        "setsid" in script and not escaped_sleeps(leader.pid)
    ):
        assert time.monotonic() < deadline, "the tree did not grow"
        time.sleep(0.005)
    return leader


def test_descendants_lists_grandchildren_parents_first():
    leader = start_tree("sh -c 'sleep 100' & wait")
    try:
        child, grandchild = descendants(leader.pid)
        assert descendants(child) == [grandchild]
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_signal_reaches_a_descendant_that_left_the_group():
    leader = start_tree("setsid sleep 100 & sleep 100")
    tree = ProcessTree(leader.pid)
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
    tree = ProcessTree(leader.pid)
    try:
        tree.signal(signal.SIGTERM, leader_alive=True)
        leader.wait(TIMEOUT)
        assert not asyncio.run(tree.wait_members(0.2))
        assert tree.alive()
    finally:
        tree.signal(signal.SIGKILL, leader_alive=False)
        asyncio.run(tree.wait_members(TIMEOUT))
        tree.close()
