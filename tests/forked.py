"""Run a function in a forked child, for tests of what a process does to itself for good.

Privilege drops, seccomp filters and Landlock domains cannot be undone: the
test process must never apply them to itself.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable


def in_child(function: Callable[[], str]) -> tuple[int, str]:
    """(exit code, what ``function`` returned) of a forked child; -N when signal N killed it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            output = function()
        except BaseException:
            output = traceback.format_exc()
            code = 1
        try:
            os.write(write, output.encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        output = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def status_fields(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/status as a dict (``CapEff``, ``NoNewPrivs``, ``Seccomp``...)."""
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)
