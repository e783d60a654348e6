"""Measure how fast chapiteau and Circus 0.19 replace a killed worker and start 100 workers.

Respawn latency: SIGKILL one of N ``sleep`` workers and time until its
replacement has exec'd (a new child of the manager whose /proc cmdline is the
worker's), polling /proc in a tight loop; repeated, median and p90 reported.
Start-up: time from launching the daemon until 100 workers have exec'd.

Circus is installed from PyPI into a throwaway venv under /tmp (``--circus``
picks an existing circusd instead). Run as root from the repository:

    .venv/bin/python bench/respawn_latency.py [--workers 10] [--repeat 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import install_circus, median, percentile, stop_manager
from chapiteau.supervisor.children.process_tree import children

MARKER = "271828"
WORKER_ARGV = ["sleep", "100000", MARKER]
POLL_TIMEOUT = 60.0
# A worker killed younger than chapiteau's crash window (1 s) counts as a crash and
# is respawned with backoff; victims are always older than this.
MIN_VICTIM_AGE = 1.5
STARTUP_RUNS = 5


def is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:-1] == [arg.encode() for arg in WORKER_ARGV]
    except OSError:
        return False


def workers(manager: int) -> set[int]:
    return {pid for pid in children(manager) if is_worker(pid)}


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + POLL_TIMEOUT
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
    return result


class Daemon:
    """A running manager; ``manager_pid`` is the process whose children are the workers."""

    def __init__(self, argv: list[str], directory: Path, nested: bool) -> None:
        self.started = time.perf_counter()
        self.log = open(directory / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, cwd=directory, stdout=self.log, stderr=self.log, start_new_session=True
        )
        self.nested = nested

    def manager_pid(self) -> int:
        if not self.nested:
            return self.process.pid
        # chapiteau: the broker's child is the supervisor, the workers' parent.
        return wait_for(lambda: next(iter(children(self.process.pid)), 0), "the supervisor")

    def stop(self) -> None:
        stop_manager(self.process)
        self.log.close()


def chapiteau_daemon(directory: Path, count: int) -> Daemon:
    config = directory / "chapiteau.ini"
    # The supervisor binds the ZMQ endpoints as nobody.
    (directory / "run").mkdir(mode=0o777)
    (directory / "run").chmod(0o777)
    config.write_text(
        "[circus]\nendpoint = ipc://{d}/run/c.sock\npubsub_endpoint = ipc://{d}/run/p.sock\n"
        "\n"
        "[broker]\nuser = nobody\n\n"
        "[watcher:sleeper]\ncmd = {cmd}\nnumprocesses = {n}\n".format(
            d=directory, cmd=" ".join(WORKER_ARGV), n=count
        )
    )
    argv = [sys.executable, "-m", "chapiteau.broker", str(config), "--log-level", "warning"]
    return Daemon(argv, directory, nested=True)


def circus_daemon(circusd: str, directory: Path, count: int, check_delay: float) -> Daemon:
    config = directory / "circus.ini"
    config.write_text(
        "[circus]\nendpoint = ipc://{d}/c.sock\npubsub_endpoint = ipc://{d}/p.sock\n"
        "check_delay = {delay}\nstatsd = false\n\n"
        "[watcher:sleeper]\ncmd = {cmd}\nnumprocesses = {n}\n".format(
            d=directory, delay=check_delay, cmd=" ".join(WORKER_ARGV), n=count
        )
    )
    return Daemon([circusd, "--log-level", "warning", str(config)], directory, nested=False)


def measure_respawn(
    make: Callable[[Path], Daemon], count: int, repeat: int, jitter: float
) -> list[float]:
    """Kill the oldest worker ``repeat`` times; a random pause of up to ``jitter`` s before
    each kill keeps the kills from falling into step with a periodic check."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        daemon = make(directory)
        try:
            manager = daemon.manager_pid()
            wait_for(lambda: len(workers(manager)) == count, f"{count} workers")
            born = {pid: time.monotonic() for pid in workers(manager)}
            latencies = []
            for _ in range(repeat):
                victim = min(born, key=born.get)
                age = time.monotonic() - born[victim]
                if age < MIN_VICTIM_AGE:
                    time.sleep(MIN_VICTIM_AGE - age)
                time.sleep(random.uniform(0, jitter))
                before = workers(manager)
                start = time.perf_counter()
                os.kill(victim, signal.SIGKILL)
                new = wait_for(lambda b=before: workers(manager) - b, "the replacement")
                latencies.append(time.perf_counter() - start)
                del born[victim]
                born.update({pid: time.monotonic() for pid in new})
                wait_for(lambda: len(workers(manager)) == count, f"{count} workers again")
            return latencies
        finally:
            daemon.stop()


def measure_startup(make: Callable[[Path], Daemon], count: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        daemon = make(directory)
        try:
            manager = daemon.manager_pid()

            def started() -> bool:
                # Polling leaves the CPU between looks: a tight loop here would slow
                # down the very start-up it times.
                time.sleep(0.001)
                return len(workers(manager)) >= count

            wait_for(started, f"{count} workers")
            return time.perf_counter() - daemon.started
        finally:
            daemon.stop()


def summary(latencies: list[float]) -> tuple[float, float]:
    return median(latencies), percentile(latencies, 0.9)


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    print(f"\n## {title}", flush=True)
    yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--startup", type=int, default=100)
    parser.add_argument("--circus", help="an existing circusd to compare against")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: chapiteau's broker switches to the user nobody")
    circusd = args.circus or str(install_circus() / "circusd")

    # (name, daemon factory, jitter: the contender's check period, 0 when it has none)
    contenders: list[tuple[str, Callable[[Path, int], Daemon], float]] = [
        ("chapiteau", chapiteau_daemon, 0.0),
        ("circus check_delay=5", lambda d, n: circus_daemon(circusd, d, n, 5), 5.0),
        ("circus check_delay=1", lambda d, n: circus_daemon(circusd, d, n, 1), 1.0),
    ]
    with section(f"Respawn latency ({args.workers} workers, {args.repeat} kills)"):
        medians = {}
        for name, factory, jitter in contenders:
            latencies = measure_respawn(
                lambda d, f=factory: f(d, args.workers), args.workers, args.repeat, jitter
            )
            middle, p90 = summary(latencies)
            medians[name] = middle
            print(f"{name:24} median {middle * 1000:9.2f} ms   p90 {p90 * 1000:9.2f} ms")
        for name in medians:
            if name != "chapiteau":
                ratio = medians[name] / medians["chapiteau"]
                print(f"{name} / chapiteau median ratio: {ratio:.0f}x")
    with section(f"Starting {args.startup} processes"):
        times = {}
        for name, factory, _ in contenders[:2]:
            runs = [
                measure_startup(lambda d, f=factory: f(d, args.startup), args.startup)
                for _ in range(STARTUP_RUNS)
            ]
            times[name] = median(runs)
            print(
                f"{name:24} {times[name]:.3f} s from launch to {args.startup} workers exec'd "
                f"(median of {STARTUP_RUNS})"
            )
        ratio = times["circus check_delay=5"] / times["chapiteau"]
        print(f"circus / chapiteau ratio: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
