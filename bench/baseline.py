"""Circus 0.19, the baseline every benchmark compares against, and the statistics they print.

``install_circus`` makes (once) a throwaway virtualenv holding circus 0.19
from PyPI (integration/circus-requirements.txt), so that chapiteau and circusd
are measured in the same run on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from chapiteau.supervisor.children.process_tree import descendants

CIRCUS_REQUIREMENTS = Path(__file__).parents[1] / "integration" / "circus-requirements.txt"
CIRCUS_VENV = Path("/tmp/chapiteau-bench-circus-venv")


def install_circus(venv: Path = CIRCUS_VENV) -> Path:
    """The ``bin`` directory of a virtualenv with circus 0.19 (circusd, circusctl)."""
    bin_dir = venv / "bin"
    if not (bin_dir / "circusd").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(bin_dir / "pip"), "install", "-q", "-r", str(CIRCUS_REQUIREMENTS)], check=True
        )
    return bin_dir


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
        process.kill()
        process.wait()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)
