"""`make bench BENCH_ARGS=zero_downtime`: what a real load sees while the manager acts.

wrk (``-t2 -c32``, 8 s, loopback; ``integration/load.py``) against 4 gunicorn
sync workers (``--bind fd://$(circus.sockets.web) -w 1``, ``numprocesses = 4``),
under chapiteau and under circusd 0.19 in turn, the order rotated each round;
each operation is fired 2 s into the load, on a daemon started for it. Per
operation and contender the table gives wrk's max latency (median, min-max, over
the rounds), the failed requests summed over the rounds (connect, read and write
errors, non-2xx, and timeouts: no response within 10 s), and the most server
processes left outside the manager's ``list`` afterwards
(``integration/managed.py``: processes carrying the run's environment mark
whose top marked ancestor is not listed). An operation that does not exist, or
a restart that fails, is said in the notes.

    .venv-wheel/bin/python bench/zero_downtime.py [--runs N]

Part ``zero_downtime`` of ``bench/run.py``, whose daemons it uses (broker as
root, supervisor and workers as nobody; circusd as root, ``check_delay = 1``).
Every process started is stopped by pid, the marked ones included. Not a test:
nothing asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import APP, BENCH_BIN, CTL, Manager, free_port
from integration.load import Load, Result
from integration.managed import MARK, marked, outside
from integration.zmq_clients import Control

WORKERS = 4
SECONDS = 8
FIRE_AT = 2.0
CALL_TIMEOUT = 60.0
# How long the daemon has, after the load, to manage every server process again.
SETTLE = 15.0
# How long a daemon started again has to run its workers (or to fail).
RESTART_WAIT = 20.0
# wrk's timeout, s: a longer wait is a failed request, and is missing from the max latency.
TIMEOUT = 10


class NotAvailable(Exception):
    """The contender has no such operation: the row says n/a and why."""


@dataclass
class Case:
    """One daemon with 4 gunicorn workers on a port of its own, its processes marked."""

    manager: Manager
    port: int
    mark: str

    def call(self, command: str, timeout: float = CALL_TIMEOUT, **properties: object) -> dict:
        control = Control(self.manager.endpoint)
        try:
            reply = control.call(command, timeout, **properties)
        finally:
            control.close()
        if reply.get("status") != "ok":
            raise RuntimeError(f"{command} {properties}: {reply}")
        return reply

    def pids(self, timeout: float = CALL_TIMEOUT) -> list[int]:
        return self.call("list", timeout, name="web")["pids"]


def body(port: int, mark: str, kind: str) -> str:
    """The config: the same for both, but for chapiteau's ``readiness = notify`` (gunicorn's
    master says READY=1 once it serves: a reload stops an old worker only then)."""
    readiness = "readiness = notify\n" if kind == "chapiteau" else ""
    gunicorn = (
        f"{BENCH_BIN / 'gunicorn'} --chdir {APP.parent} -k sync -w 1 --log-level warning "
        "--bind fd://$(circus.sockets.web) hello_app:app"
    )
    return (
        f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n\n"
        f"[watcher:web]\ncmd = {gunicorn}\nuse_sockets = true\nnumprocesses = {WORKERS}\n"
        f"{readiness}\n"
        f"[env:web]\n{MARK} = {mark}\n"
    )


# -- the operations: each returns a note (or None), or raises NotAvailable ----------------


def nothing(case: Case) -> str | None:
    """The baseline: the same load with no operation, the max latency the machine gives."""
    return None


def reload(case: Case) -> str | None:
    case.call("reload", name="web", graceful=True, waiting=True)
    return None


def restart(case: Case) -> str | None:
    case.call("restart", name="web", waiting=True)
    return None


def reload_sequential(case: Case) -> str | None:
    case.call("reload", name="web", graceful=True, sequential=True, waiting=True)
    return None


def incr_decr(case: Case) -> str | None:
    case.call("incr", name="web", nb=2, waiting=True)
    case.call("decr", name="web", nb=2, waiting=True)
    return None


def kill_worker(case: Case) -> str | None:
    os.kill(case.pids()[0], signal.SIGKILL)
    return None


def kill_manager(case: Case) -> str | None:
    """circusd, or chapiteau's supervisor (the broker stays)."""
    os.kill(case.manager.supervisor, signal.SIGKILL)
    return None


def kill_daemon_and_restart(case: Case) -> str | None:
    """circusd, or chapiteau's broker with its launcher and supervisor; then start it again."""
    for pid in case.manager.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    case.manager.process.wait()
    process = case.manager.launch()
    deadline = time.monotonic() + RESTART_WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"restart failed (exit {process.returncode}): {last_log_line(case.manager)}"
        with contextlib.suppress(AssertionError, RuntimeError):
            if len(case.pids(timeout=1)) == WORKERS:
                return "restarted"
        time.sleep(0.1)
    return f"restart: no {WORKERS} workers listed after {RESTART_WAIT:.0f} s"


def upgrade(case: Case) -> str | None:
    if case.manager.kind != "chapiteau":
        raise NotAvailable("circusd cannot replace its own code while it runs")
    result = subprocess.run(
        [str(CTL), "--endpoint", case.manager.endpoint, "upgrade"],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise NotAvailable(f"chapiteauctl upgrade: {said[-1] if said else result.returncode}")
    return None


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[[Case], str | None]
    goal: str


OPERATIONS = [
    Operation("nothing (the load alone: this machine's noise)", nothing, "-"),
    Operation("`reload web` (graceful)", reload, "< 50 ms"),
    Operation("`restart web`", restart, "worker boot time + < 20 ms"),
    Operation("`reload --sequential`", reload_sequential, "< 20 ms"),
    Operation("`incr 2` then `decr 2`", incr_decr, "< 20 ms"),
    Operation("kill -9 one worker", kill_worker, "< 20 ms"),
    Operation(
        "kill -9 the manager (circusd / chapiteau's supervisor)",
        kill_manager,
        "< 20 ms, workers managed again",
    ),
    Operation(
        "kill -9 the whole daemon (circusd / broker and supervisor), then start it again",
        kill_daemon_and_restart,
        "restart succeeds, no request refused, 0 unmanaged",
    ),
    Operation(
        "upgrade the supervisor's code (`chapiteauctl upgrade`)",
        upgrade,
        "0 failed, < 20 ms, 0 worker restarts",
    ),
]


# -- one run of one operation ------------------------------------------------------------


@dataclass
class Sample:
    result: Result | None
    unmanaged: int
    replaced: int | None
    note: str | None


def run_case(kind: str, operation: Operation) -> Sample:
    port, mark = free_port(), uuid.uuid4().hex
    manager = Manager(kind, body(port, mark, kind))
    case = Case(manager, port, mark)
    try:
        wait_serving(case)
        before = set(case.pids())
        note = None
        try:
            url = f"http://127.0.0.1:{port}/"
            with Load(url, seconds=SECONDS, after=0, timeout=TIMEOUT) as load:
                time.sleep(max(0.0, load.started + FIRE_AT - time.monotonic()))
                note = operation.run(case)
        except NotAvailable as exc:
            return Sample(None, 0, None, f"n/a: {exc}")
        listed, lost = settle(case)
        replaced = len(before - set(listed)) if listed else None
        return Sample(load.result, len(lost), replaced, note)
    finally:
        manager.stop()
        for pid in marked(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_serving(case: Case) -> None:
    """Until the 4 gunicorn masters are listed and each has forked its worker."""
    deadline = time.monotonic() + RESTART_WAIT * 3
    while len(case.pids()) < WORKERS or len(marked(case.mark)) < 2 * WORKERS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{case.manager.kind}: {WORKERS} gunicorn workers did not start")
        time.sleep(0.1)
    time.sleep(0.5)


def settle(case: Case) -> tuple[list[int], set[int]]:
    """(listed pids, marked processes outside them), once every server process is managed,
    or after SETTLE seconds, or at once when the daemon is gone."""
    deadline = time.monotonic() + SETTLE
    while True:
        alive = case.manager.process.poll() is None
        listed: list[int] = []
        if alive:
            with contextlib.suppress(AssertionError, RuntimeError):
                listed = case.pids(timeout=2)
        lost = outside(listed, case.mark)
        if (listed and not lost) or not alive or time.monotonic() > deadline:
            return listed, lost
        time.sleep(0.1)


def last_log_line(manager: Manager) -> str:
    lines = (manager.directory / "daemon.log").read_text(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else "(nothing logged)"


# -- all of it, and the table -------------------------------------------------------------


@dataclass
class Row:
    operation: Operation
    samples: dict[str, list[Sample]] = field(default_factory=dict)


CONTENDERS = ["chapiteau", "circusd"]


def run(runs: int) -> list[Row]:
    rows = [Row(operation) for operation in OPERATIONS]
    for index in range(runs):
        shift = index % len(CONTENDERS)
        for row in rows:
            for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
                sample = run_case(contender, row.operation)
                row.samples.setdefault(contender, []).append(sample)
                print(
                    f"  {row.operation.name[:40]:40} {contender:10} {describe(sample)}", flush=True
                )
    return rows


def describe(sample: Sample) -> str:
    parts = [str(sample.result)] if sample.result else []
    parts.append(f"{sample.unmanaged} unmanaged after")
    if sample.replaced is not None:
        parts.append(f"{sample.replaced} of the workers replaced")
    if sample.note:
        parts.append(sample.note)
    return "; ".join(parts)


def latency(samples: list[Sample]) -> str:
    values = [s.result.max_latency_ms for s in samples if s.result]
    if not values:
        return "n/a"
    middle = f"{statistics.median(values):,.0f} ms"
    return middle if len(values) == 1 else f"{middle} ({min(values):,.0f}-{max(values):,.0f})"


def failed(samples: list[Sample]) -> str:
    results = [s.result for s in samples if s.result]
    return str(sum(r.failed for r in results)) if results else "n/a"


def table(rows: list[Row]) -> str:
    lines = [
        "| operation | circusd 0.19 max latency | failed | unmanaged after "
        "| chapiteau max latency | failed | unmanaged after | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        cells = []
        for contender in ("circusd", "chapiteau"):
            samples = row.samples.get(contender, [])
            measured = [s for s in samples if s.result]
            unmanaged = str(max(s.unmanaged for s in measured)) if measured else "n/a"
            cells += [latency(samples), failed(samples), unmanaged]
            said = [s.note for s in samples if s.note]
            if said:
                rounds = f"{len(said)} of {len(samples)} rounds"
                notes.append(f"- {row.operation.name}, {contender} ({rounds}): {said[0]}")
        lines.append(f"| {row.operation.name} | {' | '.join(cells)} | {row.operation.goal} |")
    return "\n".join(lines + (["", *notes] if notes else []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of every operation")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: chapiteau's broker switches to the user nobody")
    print(table(run(args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
