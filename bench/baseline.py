"""Stopping a manager the benchmark started (chapiteau, circusd, a server alone), tree and all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from chapiteau.supervisor.children.process_tree import descendants


def stop_manager(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM a manager (chapiteau or circusd), then SIGKILL whatever of its tree is left.

    circusd's workers are session leaders that it can leave behind, so they
    are found by pid before the manager goes.
    """
    tree = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        # Whatever it started since, listed while they are still its descendants.
        tree.extend(descendants(process.pid))
        process.kill()
        process.wait()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
