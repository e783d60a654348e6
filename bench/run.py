"""`make bench`: chapiteau against circusd 0.19 and against the server alone, in one table.

Every part runs its contenders in turn (alternating, the order rotated each
round) on this machine, and the table gives each figure's median (min-max)
and the ratio, pair by pair. Parts, selectable by name:

- ``bjoern``: HTTP req/s, 2 bjoern workers on the inherited socket, against
  the same 2 processes run alone (one session of their own, like a pre-fork
  server started by hand) and under circusd; ``wrk -t2 -c50``, its own session.
- ``gunicorn``: 2 gunicorn (sync, 1 worker each) on the inherited socket
  against ``gunicorn -w 2`` alone.
- ``scale``: N ``sleep`` workers (1,000): time from launch to all running,
  manager RSS, idle wake-ups and CPU, respawn after ``kill -9``.
- ``big``: 10,000 workers in 100 watchers (chapiteau only): start, ``stats``
  of all, idle, RSS, stop; raises the limits it needs for its run.
- ``control``: ``status`` CLI wall time (chapiteauctl against circusctl,
  paired), and the ``list`` round trip of Circus's own ``CircusClient`` to
  chapiteau, circusd and a bare pyzmq ROUTER echo, interleaved.
- ``zero_downtime``: reload, restart, resize, kills and upgrade of 4 gunicorn
  workers under wrk's load: max latency, failed requests, processes left
  unmanaged (``bench/zero_downtime.py``; a table of its own, printed at once).
- ``steering``: new connections/s (``Connection: close``) of 4 bjoern workers
  on an ``so_reuseport`` socket, steered by chapiteau's eBPF program or not
  (circusd), and the program's CPU time per connection (``bench/steering.py``).

Run as root from the checkout with the virtualenvs ``make bench`` makes (it
runs this)::

    .venv-wheel/bin/python bench/run.py [--quick] [PART ...]

chapiteau runs as users run it (broker as root, supervisor and workers as
nobody); circusd runs as root with ``check_delay = 1``. Everything started is
stopped by pid; everything listens on loopback. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import stop_manager
from chapiteau.supervisor.children.process_tree import children, parent_of, read_proc

ROOT = Path(__file__).resolve().parent.parent
BENCH_BIN = ROOT / ".venv-bench" / "bin"
APP = ROOT / "bench" / "hello_app.py"
CLIENT = ROOT / "bench" / "circus_client.py"
CTL = Path(sys.executable).parent / "chapiteauctl"
# An argument only the benchmark's sleep workers have: a forked copy of the manager
# that has not exec'd yet does not count as running.
MARKER = "271828"
SLEEPER = f"sleep 100000 {MARKER}"
TICKS = os.sysconf("SC_CLK_TCK")
WAIT = 300.0
# A worker killed younger than chapiteau's crash window (1 s) counts as a crash.
SETTLE = 2.0
CONTROL_PROCESSES = 100
# How long the big part waits for its workers (its goal is 15 s).
BIG_WAIT = 120.0
# The supervisor's fds for each worker: its pidfd, the read ends of its stdout and stderr.
FDS_PER_WORKER = 3
# The supervisor's other fds (sockets, ZMQ, logs, the broker's channel), with a margin.
SUPERVISOR_FDS = 200


@dataclass(frozen=True)
class Settings:
    http_runs: int
    http_seconds: int
    processes: int
    scale_runs: int
    kills: int
    idle_seconds: float
    big: int
    big_watchers: int
    cli_runs: int
    list_rounds: int
    list_calls: int
    zero_downtime_runs: int


FULL = Settings(4, 8, 1000, 3, 10, 10.0, 10_000, 100, 15, 10, 200, 3)
QUICK = Settings(1, 2, 100, 1, 3, 2.0, 1000, 10, 3, 2, 20, 1)


@dataclass
class Row:
    """One line of the table: samples per contender, compared with ``reference``."""

    metric: str
    unit: str
    goal: str
    reference: str = "circusd"
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, contender: str, value: float) -> None:
        self.samples.setdefault(contender, []).append(value)


ROWS: dict[str, Row] = {}


def row(metric: str, unit: str, goal: str, reference: str = "circusd") -> Row:
    return ROWS.setdefault(metric, Row(metric, unit, goal, reference))


# -- processes ----------------------------------------------------------------------------


def cmdline(pid: int) -> bytes:
    try:
        return read_proc(f"/proc/{pid}/cmdline")
    except OSError:
        return b""


def running(manager: int, count: int, marker: str, wait: float = WAIT) -> set[int]:
    """The children of ``manager`` that have exec'd the program ``marker`` names, once there
    are ``count``, or after ``wait`` seconds those there are; cheap to call in a loop (one
    read while some are missing). The kernel walks the manager's list of children again for
    each page of its ``children`` file (30 ms a read at 6,500), so the pause between two
    reads is four times the last read: this poll takes at most a fifth of a CPU from the
    manager it measures."""
    found: set[int] = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        began = time.perf_counter()
        kids = set(children(manager))
        took = time.perf_counter() - began
        found &= kids
        if len(kids) >= count:
            found |= {pid for pid in kids - found if marker.encode() in cmdline(pid)}
            if len(found) >= count:
                return found
        time.sleep(max(0.005, 4 * took))
    return {pid for pid in children(manager) if marker.encode() in cmdline(pid)}


def all_running(manager: int, count: int, marker: str) -> set[int]:
    found = running(manager, count, marker)
    if len(found) < count:
        raise RuntimeError(f"{len(found)} of {count} workers ({marker}) ran after {WAIT:.0f} s")
    return found


def rss_mib(pid: int) -> float:
    status = read_proc(f"/proc/{pid}/status").decode()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def counters(pids: list[int]) -> tuple[int, float]:
    """(context switches of every thread, CPU seconds) summed over ``pids``."""
    switches, cpu = 0, 0.0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            status = read_proc(f"/proc/{pid}/task/{task}/status").decode()
            switches += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
        fields = read_proc(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / TICKS
    return switches, cpu


class Manager:
    """chapiteau (broker as root, supervisor as nobody) or circusd, with one config body."""

    def __init__(self, kind: str, body: str, wrapper: tuple[str, ...] = ()) -> None:
        """``wrapper``: a command that execs the daemon's (the pid stays the daemon's)."""
        self.kind = kind
        self.directory = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        self.directory.chmod(0o755)
        run = self.directory / "run"
        run.mkdir(mode=0o777)
        run.chmod(0o777)
        self.endpoint = f"ipc://{run}/control.sock"
        header = f"[circus]\nendpoint = {self.endpoint}\npubsub_endpoint = ipc://{run}/pub.sock\n"
        if kind == "chapiteau":
            header += "\n[broker]\nuser = nobody\n"
            argv = [sys.executable, "-m", "chapiteau.broker"]
        else:
            header += "check_delay = 1\nstatsd = false\n"
            argv = [str(BENCH_BIN / "circusd")]
        config = self.directory / "bench.ini"
        config.write_text(header + "\n" + body)
        config.chmod(0o644)
        self.argv = [*wrapper, *argv, str(config), "--log-level", "warning"]
        self.log = open(self.directory / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = self.launch()

    def launch(self) -> subprocess.Popen:
        """Start the daemon on this manager's config (again, after it was killed)."""
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        return self.process

    @property
    def pids(self) -> list[int]:
        """The manager's own processes (chapiteau: broker, launcher, supervisor)."""
        if self.kind != "chapiteau":
            return [self.process.pid]
        return [self.process.pid, *self._broker_children()]

    @property
    def supervisor(self) -> int:
        """The workers' parent."""
        if self.kind != "chapiteau":
            return self.process.pid
        [supervisor] = [pid for pid in self._broker_children() if not _is_launcher(pid)]
        return supervisor

    def _broker_children(self) -> list[int]:
        """The broker's children once the supervisor runs: the launcher and the supervisor."""
        deadline = time.monotonic() + WAIT
        while len(kids := children(self.process.pid)) < 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chapiteau did not start: see {self.directory}/daemon.log")
            time.sleep(0.005)
        return kids

    def stop(self) -> float:
        """Stop it and everything it started; return how long that took."""
        started = time.perf_counter()
        stop_manager(self.process, grace=WAIT)
        took = time.perf_counter() - started
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        return took


@contextlib.contextmanager
def managed(kind: str, body: str, wrapper: tuple[str, ...] = ()) -> Iterator[Manager]:
    manager = Manager(kind, body, wrapper)
    try:
        yield manager
    finally:
        manager.stop()


def sleepers(count: int, watchers: int = 1) -> str:
    return "".join(
        f"[watcher:sleeper{index}]\ncmd = {SLEEPER}\nnumprocesses = {count // watchers}\n\n"
        for index in range(watchers)
    )


def call(endpoint: str, command: str, timeout: float = WAIT) -> dict:
    """One Circus request, as any DEALER client sends it."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint)
    try:
        dealer.send(json.dumps({"id": "bench", "command": command, "properties": {}}).encode())
        if not dealer.poll(timeout * 1000):
            raise RuntimeError(f"no reply to {command} from {endpoint}")
        return json.loads(dealer.recv())
    finally:
        dealer.close()


def rounds(contenders: list[str], count: int) -> Iterator[tuple[int, str]]:
    """(round, contender), each round in another order."""
    for index in range(count):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            yield index, contender


# -- HTTP -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(port: int) -> str:
    """The URL of the HTTP server on ``port``, once it answers (and half a second more)."""
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    time.sleep(0.5)
    return url


def wrk_report(url: str, seconds: int, *options: str) -> str:
    """wrk's report (``-t2 -c50``), wrk in a session (so a scheduling group) of its own."""
    return subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{seconds}s", *options, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        start_new_session=True,
        check=True,
    ).stdout


def requests_per_second(report: str) -> float:
    return float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1))


def wrk(port: int, seconds: int) -> float:
    """Requests per second of the server on ``port``."""
    return requests_per_second(wrk_report(serving(port), seconds))


def http_body(port: int, cmd: str) -> str:
    return (
        f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n\n"
        f"[watcher:web]\ncmd = {cmd}\nuse_sockets = true\nnumprocesses = 2\n"
    )


def alone(argv: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def http(
    metric: Row, settings: Settings, managed_cmd: str, alone_run: Callable[[int], float]
) -> None:
    """Requests per second of ``managed_cmd`` under chapiteau and circusd, and ``alone_run``."""
    for _, contender in rounds(["alone", "chapiteau", "circusd"], settings.http_runs):
        port = free_port()
        if contender == "alone":
            value = alone_run(port)
        else:
            cmd = managed_cmd.format(sock="$(circus.sockets.web)")
            with managed(contender, http_body(port, cmd)):
                value = wrk(port, settings.http_seconds)
        metric.add(contender, value)
        print(f"  {contender:10} {value:9.0f} req/s", flush=True)


def bench_bjoern(settings: Settings) -> None:
    python = BENCH_BIN / "python"

    def run_alone(port: int) -> float:
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(1024)
            fd = listener.fileno()
            worker = f"'{python}' '{APP}' {fd}"
            # Both in one session of their own, as a pre-fork server's workers are.
            shell = alone(["sh", "-c", f"{worker} & {worker} & wait"], (fd,))
        try:
            return wrk(port, settings.http_seconds)
        finally:
            stop_manager(shell)

    metric = row(
        "HTTP req/s, 2 bjoern workers on the inherited socket vs the same 2 alone",
        "req/s",
        ">= 0.99x alone",
        reference="alone",
    )
    http(metric, settings, f"{python} {APP} {{sock}}", run_alone)


def bench_gunicorn(settings: Settings) -> None:
    gunicorn = [str(BENCH_BIN / "gunicorn"), "--chdir", str(APP.parent), "-k", "sync"]

    def run_alone(port: int) -> float:
        server = alone([*gunicorn, "-w", "2", "--bind", f"127.0.0.1:{port}", "hello_app:app"])
        try:
            return wrk(port, settings.http_seconds)
        finally:
            stop_manager(server)

    metric = row(
        "HTTP req/s, gunicorn sync x2 (1 worker each) vs gunicorn -w2 alone",
        "req/s",
        ">= 0.99x alone",
        reference="alone",
    )
    cmd = " ".join([*gunicorn, "-w", "1", "--bind", "fd://{sock}", "hello_app:app"])
    http(metric, settings, cmd, run_alone)


# -- processes at scale ---------------------------------------------------------------------


def respawns(manager: int, workers: set[int], kills: int) -> list[float]:
    """Seconds from SIGKILL of a worker to its replacement's exec, ``kills`` times; a random
    pause of up to 1 s (circusd's check_delay) before each kill.

    The replacement is looked for among the pids allocated since the kill (the kernel
    gives them in increasing order: /proc/sys/kernel/ns_last_pid), not in the manager's
    list of children, whose read takes milliseconds with 1,000 workers and would be
    most of what is measured."""
    latencies = []
    known = set(workers)
    for victim in random.sample(sorted(workers), kills):
        time.sleep(random.uniform(0, 1))
        after = last_pid()
        started = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while not (new := [pid for pid in spawned_since(manager, after) if pid not in known]):
            if time.monotonic() > deadline:
                raise RuntimeError("no replacement for a killed worker")
        latencies.append(time.perf_counter() - started)
        known.discard(victim)
        known.update(new)
    return latencies


def last_pid() -> int:
    return int(read_proc("/proc/sys/kernel/ns_last_pid"))


def spawned_since(manager: int, after: int) -> list[int]:
    """The children of ``manager`` that have exec'd the benchmark's program, among the
    pids allocated after ``after`` (all of its children once the pid numbers wrapped)."""
    now = last_pid()
    candidates = range(after + 1, now + 1) if now >= after else children(manager)
    return [
        pid for pid in candidates if parent_of(pid) == manager and MARKER.encode() in cmdline(pid)
    ]


def _is_launcher(pid: int) -> bool:
    """The broker's small root helper that starts supervisors (it names itself so)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().startswith(b"chapiteau: launcher")


def idle(pids: list[int], seconds: float) -> tuple[float, float]:
    """(wake-ups per second, CPU %) of ``pids`` over ``seconds`` of nothing happening."""
    before = counters(pids)
    time.sleep(seconds)
    after = counters(pids)
    return (after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds * 100


def bench_scale(settings: Settings) -> None:
    n = f"{settings.processes:,}"
    start = row(f"start -> {n} processes running", "s", "< 1.5 s")
    respawn = row(f"respawn after kill -9 (median), {n} processes", "ms", "< 3 ms")
    wakeups = row(f"idle wake-ups of the manager, {n} sleeping processes", "/s", "0")
    cpu = row(f"idle CPU of the manager, {n} sleeping processes", "%", "0")
    rss = row(f"manager RSS with {n} processes (chapiteau: supervisor)", "MiB", "< 30 MiB")
    broker = row("broker RSS", "MiB", "< 12 MiB")
    for _, contender in rounds(["chapiteau", "circusd"], settings.scale_runs):
        with managed(contender, sleepers(settings.processes)) as manager:
            parent = manager.supervisor
            workers = all_running(parent, settings.processes, MARKER)
            start.add(contender, time.perf_counter() - manager.started)
            time.sleep(SETTLE)
            rss.add(contender, rss_mib(parent))
            if contender == "chapiteau":
                broker.add(contender, rss_mib(manager.process.pid))
            woken, busy = idle(manager.pids, settings.idle_seconds)
            wakeups.add(contender, woken)
            cpu.add(contender, busy)
            latencies = respawns(parent, workers, settings.kills)
            respawn.add(contender, statistics.median(latencies) * 1000)
        print(
            f"  scale    {contender:10} start {start.samples[contender][-1]:.2f} s, "
            f"respawn {respawn.samples[contender][-1]:.1f} ms, idle {woken:.1f}/s {busy:.2f} %, "
            f"RSS {rss.samples[contender][-1]:.1f} MiB",
            flush=True,
        )


@contextlib.contextmanager
def limits_for(processes: int) -> Iterator[None]:
    """Raise, for the run, the soft limits on open files and processes (up to the hard
    ones) and pid_max to what ``processes`` workers need."""
    wanted = processes * FDS_PER_WORKER + 4096
    saved = {
        limit: resource.getrlimit(limit)
        for limit in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC)
    }
    for limit, (soft, hard) in saved.items():
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(limit, (target, hard))
    pid_max = Path("/proc/sys/kernel/pid_max")
    old_pid_max = int(pid_max.read_text())
    if old_pid_max < wanted * 4:
        pid_max.write_text(str(wanted * 4))
    try:
        yield
    finally:
        for limit, value in saved.items():
            resource.setrlimit(limit, value)
        if old_pid_max < wanted * 4:
            pid_max.write_text(str(old_pid_max))


def fitting(processes: int, watchers: int) -> int:
    """As many of ``processes`` (a multiple of ``watchers``) as the supervisor can hold fds
    for under the hard limit on open files, which root without CAP_SYS_RESOURCE (as in
    some containers) cannot raise."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return processes
    fit = (hard - SUPERVISOR_FDS) // FDS_PER_WORKER // watchers * watchers
    if fit < processes:
        print(
            f"  hard RLIMIT_NOFILE is {hard:,}: the supervisor holds {FDS_PER_WORKER} fds a "
            f"worker, so {fit:,} of the {processes:,} workers run",
            flush=True,
        )
    return min(processes, fit)


def bench_big(settings: Settings) -> None:
    total = fitting(settings.big, settings.big_watchers)
    label = f"{total:,} processes in {settings.big_watchers} watchers, chapiteau"
    with limits_for(total):
        manager = Manager("chapiteau", sleepers(total, settings.big_watchers))
        try:
            parent = manager.supervisor
            count = len(running(parent, total, MARKER, BIG_WAIT))
            took = time.perf_counter() - manager.started
            if count < total:
                row(f"processes running after {took:.0f} s, {label}", "", f"{total:,}").add(
                    "chapiteau", count
                )
                row(f"supervisor RSS with {count:,} of them running", "MiB", "").add(
                    "chapiteau", rss_mib(parent)
                )
                return
            row(f"start -> {label}", "s", "< 15 s").add("chapiteau", took)
            time.sleep(SETTLE)
            row(f"supervisor RSS, {label}", "MiB", "< 30 MiB").add("chapiteau", rss_mib(parent))
            started = time.perf_counter()
            reply = call(manager.endpoint, "stats")
            row(f"`stats` of all, {label}", "s", "").add("chapiteau", time.perf_counter() - started)
            if reply.get("status") != "ok":
                raise RuntimeError(f"stats failed: {reply}")
            woken, busy = idle(manager.pids, settings.idle_seconds)
            row(f"idle wake-ups, {label}", "/s", "0").add("chapiteau", woken)
            row(f"idle CPU, {label}", "%", "0").add("chapiteau", busy)
        finally:
            row(f"stop, {label}", "s", "").add("chapiteau", manager.stop())
    print(f"  {label}: done", flush=True)


# -- control --------------------------------------------------------------------------------


# Both programs run from their bytecode caches, as installed programs do (pip compiles
# them): with PYTHONDONTWRITEBYTECODE in the environment, chapiteau's editable checkout
# would be compiled again at every run, and circusctl, installed, would not.
CLI_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
        env=CLI_ENVIRONMENT,
    )
    return time.perf_counter() - started


def bench_control(settings: Settings) -> None:
    body = sleepers(CONTROL_PROCESSES)
    with managed("chapiteau", body) as ours, managed("circusd", body) as theirs:
        for manager in (ours, theirs):
            all_running(manager.supervisor, CONTROL_PROCESSES, MARKER)
        status = row(
            f"`status` CLI wall ({CONTROL_PROCESSES} processes)", "ms", "<= 0.5x circusctl"
        )
        commands = {
            "chapiteau": [str(CTL), "--endpoint", ours.endpoint, "status"],
            "circusd": [str(BENCH_BIN / "circusctl"), "--endpoint", theirs.endpoint, "status"],
        }
        for argv in commands.values():
            wall(argv)
        for _, contender in rounds(list(commands), settings.cli_runs):
            status.add(contender, wall(commands[contender]) * 1000)
        echo_endpoint = f"ipc://{ours.directory}/echo.sock"
        echo = alone([str(BENCH_BIN / "python"), str(CLIENT), "echo", echo_endpoint])
        try:
            result = subprocess.run(
                [str(BENCH_BIN / "python"), str(CLIENT), "list", str(settings.list_rounds),
                 str(settings.list_calls), ours.endpoint, theirs.endpoint, echo_endpoint],
                capture_output=True, text=True, timeout=WAIT, check=True,
            )  # fmt: skip
        finally:
            stop_manager(echo)
    medians = json.loads(result.stdout)
    trip = row(
        "`list` round trip, Circus's CircusClient, vs a bare pyzmq ROUTER echo",
        "ms",
        "<= 1.1x the echo",
        reference="echo",
    )
    for contender, endpoint in (
        ("chapiteau", ours.endpoint),
        ("circusd", theirs.endpoint),
        ("echo", echo_endpoint),
    ):
        for value in medians[endpoint]:
            trip.add(contender, value * 1000)
    print("  control  done", flush=True)


# -- the table ------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    digits = 0 if max(values) >= 1000 else 1 if max(values) >= 10 else 2
    middle = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def ratio(values: list[float], reference: list[float]) -> str:
    """The median of the ratios run by run (min-max), or of the medians when unpaired."""
    if not values or not reference:
        return "-"
    if len(values) == len(reference) and 0 not in reference:
        pairs = [value / base for value, base in zip(values, reference, strict=True)]
    elif statistics.median(reference):
        pairs = [statistics.median(values) / statistics.median(reference)]
    else:
        return "-"
    if len(pairs) == 1:
        return f"{pairs[0]:.3f}x"
    return f"{statistics.median(pairs):.3f}x ({min(pairs):.3f}-{max(pairs):.3f})"


def table() -> str:
    lines = [
        "| metric | unit | circusd 0.19 | chapiteau | alone / echo / unsteered | chapiteau ratio | "
        "circusd ratio | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in ROWS.values():
        ours = item.samples.get("chapiteau", [])
        theirs = item.samples.get("circusd", [])
        base = item.samples.get(item.reference, [])
        reference = "-" if item.reference == "circusd" else spread(base)
        against = f"vs {item.reference}"
        lines.append(
            f"| {item.metric} | {item.unit} | {spread(theirs)} | {spread(ours)} | {reference} "
            f"| {ratio(ours, base)} {against if base else ''} "
            f"| {ratio(theirs, base) if item.reference != 'circusd' else '-'} | {item.goal} |"
        )
    return "\n".join(lines)


def bench_zero_downtime(settings: Settings) -> None:
    """Operations under a real load: a table of its own (bench/zero_downtime.py)."""
    from bench import zero_downtime  # it builds on this module's Manager

    print(zero_downtime.table(zero_downtime.run(settings.zero_downtime_runs)), flush=True)


def bench_steering(settings: Settings) -> None:
    """New connections to an so_reuseport socket, steered or not (bench/steering.py)."""
    from bench import steering  # it builds on this module's Manager

    # Run as a program, this module is __main__, not the bench.run steering imports:
    # its rows go to this module's table.
    steering.bench_steering(settings, row)


PARTS: dict[str, Callable[[Settings], None]] = {
    "bjoern": bench_bjoern,
    "gunicorn": bench_gunicorn,
    "scale": bench_scale,
    "big": bench_big,
    "control": bench_control,
    "zero_downtime": bench_zero_downtime,
    "steering": bench_steering,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: chapiteau's broker switches to the user nobody")
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part {', '.join(sorted(unknown))}: the parts are {', '.join(PARTS)}")
    settings = QUICK if args.quick else FULL
    failed = []
    for name in args.parts or PARTS:
        print(f"## {name}", flush=True)
        try:
            PARTS[name](settings)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print()
    print(table())
    if failed:
        print(f"\nfailed: {', '.join(failed)} (see above); the table lacks their rows")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
