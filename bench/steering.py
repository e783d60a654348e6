"""`make bench BENCH_ARGS=steering`: what steering an ``so_reuseport`` socket costs.

4 bjoern workers (``bench/hello_app.py``), each on its own ``so_reuseport``
socket (``numprocesses = 4``, ``$(circus.sockets.web)`` in ``cmd``: both managers
bind one per worker), under ``wrk -t2 -c50 -H 'Connection: close'``: a new
connection per request, since the program runs once per connection (keep-alive
would hide it). Rounds alternate chapiteau, the same chapiteau *unsteered*
(its broker started with CAP_BPF and CAP_SYS_ADMIN out of its bounding set by
util-linux's ``setpriv``, so that it cannot load the program and logs
``steering_unavailable``: the kernel's hash picks the socket) and circusd 0.19,
which steers nothing either.

- New connections per second (wrk's Requests/sec), chapiteau against the same
  chapiteau unsteered (what steering itself costs) and against circusd (which
  differs in more than steering: its workers are in sessions of their own),
  paired round by round.
- The program's own CPU time per run, chapiteau only: a second wrk run on the
  same daemon with ``kernel.bpf_stats_enabled`` set (the kernel then times
  every BPF program; the previous value is restored afterwards), the
  ``run_time_ns`` and ``run_cnt`` deltas of the daemon's ``chapiteau_steer``
  programs over it. With 4 workers ready, 4 doors are open and the count the
  program probes is 4: the first probe finds an open door.

The daemon's programs are those whose fds its broker holds (``prog_id`` in
``/proc/PID/fdinfo``): other daemons on the machine may have loaded programs of
the same name. Their name and counters come from bpf(2)
(``BPF_PROG_GET_FD_BY_ID``, ``BPF_OBJ_GET_INFO_BY_FD``). Part ``steering`` of
``bench/run.py``, whose daemons, rounds and table it uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.run import (
    APP,
    BENCH_BIN,
    Row,
    Settings,
    free_port,
    managed,
    requests_per_second,
    rounds,
    serving,
    wrk_report,
)
from chapiteau.broker.steering import PROGRAM_NAME
from chapiteau.protocol.steering_maps import bpf

WORKERS = 4
CLOSE = ("-H", "Connection: close")
UNSTEERED = ("setpriv", "--bounding-set", "-bpf,-sys_admin,-perfmon", "--")
"""How the unsteered contender's broker is started: it cannot load BPF programs."""
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")

PROG_GET_FD_BY_ID = 13
OBJ_GET_INFO_BY_FD = 15
# struct bpf_prog_info (linux/bpf.h, Debian 12's linux-libc-dev; offsetof printed by a
# C program): its size and where its name (char[16]), run_time_ns and run_cnt (u64) are.
# The kernel fills what it knows of a longer or shorter buffer.
INFO_SIZE = 232
NAME_AT = 64
RUN_TIME_AT = 192
RUN_COUNT_AT = 200


def program_ids(broker: int) -> set[int]:
    """The ids of the BPF programs whose fds ``broker`` holds."""
    ids = set()
    for fd in os.listdir(f"/proc/{broker}/fdinfo"):
        with contextlib.suppress(FileNotFoundError):
            found = re.search(
                r"^prog_id:\s+(\d+)$", Path(f"/proc/{broker}/fdinfo/{fd}").read_text(), re.M
            )
            if found:
                ids.add(int(found.group(1)))
    return ids


def program_counters(prog_id: int) -> tuple[bytes, int, int]:
    """(name, run_time_ns, run_cnt) of the loaded program ``prog_id``."""
    fd = bpf(PROG_GET_FD_BY_ID, struct.pack("=I", prog_id))
    try:
        info = ctypes.create_string_buffer(INFO_SIZE)
        bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, INFO_SIZE, ctypes.addressof(info)))
    finally:
        os.close(fd)
    name = info.raw[NAME_AT : NAME_AT + 16].split(b"\0", 1)[0]
    [run_time] = struct.unpack_from("=Q", info.raw, RUN_TIME_AT)
    [runs] = struct.unpack_from("=Q", info.raw, RUN_COUNT_AT)
    return name, run_time, runs


def steering_counters(broker: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over ``broker``'s ``chapiteau_steer`` programs."""
    total_time = total_runs = 0
    for prog_id in program_ids(broker):
        try:
            name, run_time, runs = program_counters(prog_id)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        if name == PROGRAM_NAME:
            total_time += run_time
            total_runs += runs
    return total_time, total_runs


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """``kernel.bpf_stats_enabled`` set for the block, its previous value restored."""
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(previous)


def body(port: int) -> str:
    cmd = f"{BENCH_BIN / 'python'} {APP} $(circus.sockets.web)"
    return (
        f"[socket:web]\nhost = 127.0.0.1\nport = {port}\nso_reuseport = true\n\n"
        f"[watcher:web]\ncmd = {cmd}\nuse_sockets = true\nnumprocesses = {WORKERS}\n"
    )


def requests(report: str) -> int:
    """How many requests (here connections) wrk completed."""
    return int(re.search(r"(\d+) requests in", report).group(1))


def bench_steering(settings: Settings, row: Callable[[str, str, str], Row]) -> None:
    """Add the part's samples to the rows ``row`` makes (those of the table printed)."""
    label = f"{WORKERS} bjoern workers on an so_reuseport socket"
    connections = row(
        f"new connections/s (wrk -c50, Connection: close), {label}", "conn/s", ">= 0.99x circusd"
    )
    steered = row(
        f"new connections/s, {label}: steered vs the same chapiteau unsteered",
        "conn/s",
        ">= 0.99x unsteered",
        reference="unsteered",
    )
    cost = row(
        f"steering program CPU per connection ({WORKERS} doors open, count {WORKERS})",
        "ns",
        "< 1 µs",
    )
    ratio = row("steering program runs per wrk request", "", "1")
    # Twice the rounds of the other HTTP parts: new connections/s swing by 10 % from one
    # round to the next on 2 CPUs, more than what is measured.
    contenders = ["chapiteau", "unsteered", "circusd"]
    for _, contender in rounds(contenders, 2 * settings.http_runs):
        port = free_port()
        kind, wrapper = ("chapiteau", UNSTEERED) if contender == "unsteered" else (contender, ())
        with managed(kind, body(port), wrapper) as manager:
            url = serving(port)
            report = wrk_report(url, settings.http_seconds, *CLOSE)
            value = requests_per_second(report)
            for metric in (connections, steered):
                if contender in ("chapiteau", metric.reference):
                    metric.add(contender, value)
            line = f"  steering {contender:10} {value:9.0f} conn/s"
            errors = re.search(r"Socket errors: .*|Non-2xx .*", report)
            if errors:
                line += f" ({errors.group(0)})"
            if contender == "chapiteau":
                broker = manager.process.pid
                with bpf_stats():
                    before = steering_counters(broker)
                    report = wrk_report(url, settings.http_seconds, *CLOSE)
                    after = steering_counters(broker)
                run_time, runs = after[0] - before[0], after[1] - before[1]
                if runs:
                    cost.add(contender, run_time / runs)
                    ratio.add(contender, runs / requests(report))
                    line += f", program {run_time / runs:.0f} ns x {runs} runs"
                else:
                    line += ", no chapiteau_steer program ran: steering unavailable?"
        print(line, flush=True)
