"""Is every worker process managed? The processes a watcher lists against those in /proc.

A test (or the bench) marks a watcher's processes with an environment variable,
``CHAPITEAU_TEST_MARK = <a unique value>`` in ``[env:NAME]``; the processes they
start (gunicorn's workers, for instance) inherit it. The *roots* are the marked
processes whose parent is not marked: the watcher's own processes, plus any
that outlived their parent (an orphan the manager lost track of). After an
operation, `assert_all_managed` waits until the roots are exactly the pids
``list name=NAME`` answers: then no server process of the watcher runs outside
the manager's list, and the list names no process that is gone. `outside`
counts the processes a manager lost, for the bench.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable

MARK = "CHAPITEAU_TEST_MARK"


def marked(value: str, variable: str = MARK) -> dict[int, int]:
    """pid → parent pid of every live process whose environment has ``variable=value``."""
    wanted = f"{variable}={value}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{name}/environ", "rb") as environ:
                if wanted not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat", "rb") as stat:
                found[int(name)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
    return found


def roots(value: str) -> set[int]:
    """The marked processes whose parent is not marked."""
    processes = marked(value)
    return {pid for pid, parent in processes.items() if parent not in processes}


def outside(listed: Iterable[int], value: str) -> set[int]:
    """The marked processes outside the trees of the ``listed`` pids: those a manager lost."""
    processes = marked(value)
    kept = set(listed)
    lost = set()
    for pid in processes:
        top = pid
        while processes.get(top) in processes:
            top = processes[top]
        if top not in kept:
            lost.add(pid)
    return lost


def assert_all_managed(
    listed: Callable[[], list[int]], value: str, count: int | None, timeout: float = 30.0
) -> set[int]:
    """Wait until ``listed()`` (a watcher's pids) has ``count`` pids (any number if None) and
    they are exactly the roots of the processes marked ``value``; return them.
    AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        pids = set(listed())
        found = roots(value)
        if pids == found and count in (None, len(pids)) and set(listed()) == pids:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {timeout} s, listed {sorted(pids)} (want {count or 'any number'}), "
                f"processes running: {sorted(found)}; "
                f"unmanaged: {sorted(found - pids)}, listed but gone: {sorted(pids - found)}"
            )
        time.sleep(0.05)
