"""Check that the installed supervisor code starts on this configuration, before an upgrade.

``upgrade`` hands every worker over to the supervisor the broker starts next,
which runs whatever code is installed now. Before that, `check_installed_code`
runs that code with this supervisor's own command line and ``--check``
(import everything, load the configuration, exit); if it fails, its last line
says why and the running supervisor carries on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from chapiteau.supervisor.children.child_exit import ChildWatcher
from chapiteau.supervisor.children.spawn import SpawnSpec, spawn

CHECK_FLAG = "--check"
"""Appended to the supervisor's own command line: load everything, then exit."""
CHECK_TIMEOUT = 60.0


class UpgradeError(Exception):
    """The installed code would not start; str() says why, for the operator."""


async def check_installed_code(
    children: ChildWatcher, exits: dict[int, asyncio.Future[int | None]]
) -> None:
    """Run the check as a child watched by ``children``, whose exit handler resolves the
    future it finds in ``exits`` under its pid. UpgradeError when it fails."""
    output = os.memfd_create("upgrade-check", os.MFD_CLOEXEC)
    try:
        argv = (sys.executable, *sys.orig_argv[1:], CHECK_FLAG)
        pid = spawn(SpawnSpec(argv=argv, env=dict(os.environ), stdout=output, stderr=output))
        exited = exits[pid] = asyncio.get_running_loop().create_future()
        children.watch(pid)
        try:
            code = await asyncio.wait_for(asyncio.shield(exited), CHECK_TIMEOUT)
        except TimeoutError:
            children.send_signal(pid, signal.SIGKILL)
            await exited
            raise UpgradeError(f"the check did not end in {CHECK_TIMEOUT:g} s") from None
        if code != 0:
            lines = os.pread(output, 1 << 20, 0).decode(errors="replace").splitlines()
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            raise UpgradeError(f"the new supervisor would not start: {last}")
    finally:
        os.close(output)
