"""Control-channel latency, chapiteau against circusd 0.19, in one run.

Measures, against both daemons running the same watcher of 100 ``sleep``
processes: the round trip of ``list`` (1000 calls per run, several runs),
``list name=W`` and ``stats name=W`` (fewer calls: they touch every process),
then the wall time of ``chapiteauctl status`` and ``circusctl status``.
Prints medians, p99s and chapiteau/circusd ratios. Run as root from the
checkout::

    .venv/bin/python bench/control_latency.py [--circus-venv DIR] [--runs 5]

circusd comes from a virtualenv holding ``circus==0.19.0`` (made with pip if
DIR has none). This is a script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import CIRCUS_VENV, install_circus, percentile, stop_manager
from integration.harness import Chapiteau, free_port, wait_until

PROCESSES = 100
WATCHER = """
[watcher:sleeper]
cmd = sleep 100000
numprocesses = {n}
"""


class Dealer:
    """A Circus-style DEALER client timing each round trip."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(endpoint)
        self.counter = 0

    def call(self, command: str, **properties: object) -> dict:
        self.counter += 1
        request_id = str(self.counter)
        self.socket.send(json.dumps({"id": request_id, "command": command,
                                     "properties": properties}).encode())  # fmt: skip
        while True:
            if not self.socket.poll(10_000):
                raise TimeoutError(f"no reply to {command}")
            reply = json.loads(self.socket.recv())
            if reply.get("id") == request_id:
                return reply

    def timings(self, count: int, command: str, **properties: object) -> list[float]:
        result = []
        for _ in range(count):
            started = time.perf_counter()
            self.call(command, **properties)
            result.append(time.perf_counter() - started)
        return result

    def close(self) -> None:
        self.socket.close()


def wall_times(argv: list[str], count: int) -> list[float]:
    result = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        result.append(time.perf_counter() - started)
    return result


def start_chapiteau(workdir: Path, endpoint: str) -> Chapiteau:
    config = (
        f"[circus]\nendpoint = {endpoint}\npubsub_endpoint = tcp://127.0.0.1:{free_port()}\n"
        f"[broker]\nuser = nobody\n" + WATCHER.format(n=PROCESSES)
    )
    # A later --log-level wins over the harness's debug, which no user runs with.
    return Chapiteau(workdir, config, ("--log-level", "warning")).start()


def start_circusd(venv: Path, workdir: Path, endpoint: str) -> subprocess.Popen:
    config = workdir / "circus.ini"
    config.write_text(
        f"[circus]\nendpoint = {endpoint}\npubsub_endpoint = tcp://127.0.0.1:{free_port()}\n"
        f"check_delay = 5\n" + WATCHER.format(n=PROCESSES)
    )
    return subprocess.Popen(
        [str(venv / "circusd"), str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(client: Dealer) -> None:
    def ready() -> bool:
        try:
            return len(client.call("list", name="sleeper").get("pids", [])) == PROCESSES
        except TimeoutError:
            return False

    wait_until(ready, timeout=60)


def measure(name: str, client: Dealer, runs: int) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    for label, count, command, props in (
        ("list", 1000, "list", {}),
        ("list name=", 200, "list", {"name": "sleeper"}),
        (f"stats ({PROCESSES} procs)", 20, "stats", {"name": "sleeper"}),
    ):
        samples: list[float] = []
        medians = []
        for _ in range(runs):
            run = client.timings(count, command, **props)
            medians.append(statistics.median(run))
            samples.extend(run)
        results[label] = (statistics.median(medians), percentile(samples, 0.99))
        print(f"  {name:10} {label:18} median {results[label][0] * 1e3:8.3f} ms   "
              f"p99 {results[label][1] * 1e3:8.3f} ms")  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circus-venv", type=Path, default=CIRCUS_VENV)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    venv = install_circus(args.circus_venv)
    workdir = Path(tempfile.mkdtemp(prefix="chapiteau-bench-"))
    workdir.chmod(0o755)
    chapiteau_endpoint = f"tcp://127.0.0.1:{free_port()}"
    circus_endpoint = f"tcp://127.0.0.1:{free_port()}"
    tree = start_chapiteau(workdir, chapiteau_endpoint)
    circusd = start_circusd(venv, workdir, circus_endpoint)
    clients = {"chapiteau": Dealer(chapiteau_endpoint), "circusd": Dealer(circus_endpoint)}
    try:
        for client in clients.values():
            wait_ready(client)
        results = {name: measure(name, client, args.runs) for name, client in clients.items()}
        print("\nratios chapiteau / circusd (median, p99):")
        for label in results["chapiteau"]:
            ours, theirs = results["chapiteau"][label], results["circusd"][label]
            print(f"  {label:18} {ours[0] / theirs[0]:6.2f}x   {ours[1] / theirs[1]:6.2f}x")
        ctl = Path(sys.executable).parent / "chapiteauctl"
        print("\nwall time of `status` (20 runs, median):")
        ours = statistics.median(
            wall_times([str(ctl), "--endpoint", chapiteau_endpoint, "status"], 20)
        )
        theirs = statistics.median(
            wall_times([str(venv / "circusctl"), "--endpoint", circus_endpoint, "status"], 20)
        )
        print(f"  chapiteauctl {ours * 1e3:7.1f} ms\n  circusctl    {theirs * 1e3:7.1f} ms\n"
              f"  ratio        {ours / theirs:7.2f}x")  # fmt: skip
    finally:
        for client in clients.values():
            client.close()
        stop_manager(circusd)
        tree.shut_down()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
