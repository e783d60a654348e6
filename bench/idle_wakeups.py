"""How quiet an idle manager is: wake-ups and CPU time over an idle period, chapiteau vs circusd.

Both daemons run one watcher of N ``sleep`` workers and nothing happens for
``--seconds``; the script reads, for every thread of the manager processes
(chapiteau's broker, launcher and supervisor; circusd), the context switches and CPU
ticks from /proc before and after. Several runs, medians printed. Run as root
from the checkout::

    .venv/bin/python bench/idle_wakeups.py [--workers 100] [--seconds 10] [--runs 3]

This is a script, not a test: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import install_circus, median, stop_manager
from chapiteau.supervisor.children.process_tree import children

WATCHER = "[watcher:sleeper]\ncmd = sleep 100000\nnumprocesses = {n}\n"
TICKS = os.sysconf("SC_CLK_TCK")


def counters(pids: list[int]) -> tuple[int, float]:
    """(context switches of every thread, CPU seconds) summed over ``pids``."""
    switches, cpu = 0, 0.0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as status:
                switches += sum(int(line.split()[-1]) for line in status if "ctxt_switches" in line)
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / TICKS
    return switches, cpu


def start(argv: list[str], directory: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def managers(process: subprocess.Popen, workers: int, chapiteau: bool) -> list[int]:
    """The manager pids once every worker runs (chapiteau: broker, launcher, supervisor)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [process.pid, *children(process.pid)] if chapiteau else [process.pid]
        if any(len(children(pid)) >= workers for pid in pids):
            return pids
        time.sleep(0.1)
    raise RuntimeError("the workers did not start")


def measure(argv: list[str], directory: Path, workers: int, seconds: float, chapiteau: bool):
    process = start(argv, directory)
    try:
        pids = managers(process, workers, chapiteau)
        time.sleep(2)  # let start-up settle
        before = counters(pids)
        time.sleep(seconds)
        after = counters(pids)
    finally:
        stop_manager(process)
    return (after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds * 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    circus_bin = install_circus()
    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            directory.chmod(0o755)
            run = directory / "run"
            run.mkdir(mode=0o777)
            run.chmod(0o777)
            endpoints = f"endpoint = ipc://{run}/c.sock\npubsub_endpoint = ipc://{run}/p.sock\n"
            chapiteau_ini = directory / "chapiteau.ini"
            chapiteau_ini.write_text(f"[circus]\n{endpoints}\n" + WATCHER.format(n=args.workers))
            chapiteau_ini.chmod(0o644)
            circus_ini = directory / "circus.ini"
            for delay in (5, 1):
                circus_ini.write_text(
                    f"[circus]\n{endpoints}check_delay = {delay}\n" + WATCHER.format(n=args.workers)
                )
                results.setdefault(f"circusd (check_delay {delay})", []).append(
                    measure(
                        [str(circus_bin / "circusd"), str(circus_ini)],
                        directory,
                        args.workers,
                        args.seconds,
                        chapiteau=False,
                    )
                )
            results.setdefault("chapiteau", []).append(
                measure(
                    [sys.executable, "-m", "chapiteau.broker", str(chapiteau_ini)],
                    directory,
                    args.workers,
                    args.seconds,
                    chapiteau=True,
                )
            )
    print(f"idle, {args.workers} workers, {args.seconds:.0f} s, median of {args.runs} runs")
    for name, samples in results.items():
        wakeups = median([w for w, _ in samples])
        cpu = median([c for _, c in samples])
        print(f"  {name:26} {wakeups:8.1f} wake-ups/s   {cpu:6.2f} % CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
