"""Publish the stats stream: per-process CPU/memory and socket load, once a second.

Circus runs this as a separate ``circusd-stats`` watcher that learns pids over
the control and event endpoints and polls its sockets with ``select()`` every
10 ms (issue #853). Here it lives inside the supervisor: the pids come straight
from the watchers, one timer drives everything, and nothing exists when
``[circus] statsd`` is off.

Topics and payloads are Circus's, so ``circus-top`` and other consumers of
``stats_endpoint`` work unchanged:

* ``stat.<watcher>.<pid>``: :func:`ProcessSampler.sample`'s fields, plus
  ``subtopic`` (the pid) and ``name`` (null);
* ``stat.<watcher>``: ``{"pid": [...], "cpu": mean, "mem": sum, "age": max}``;
* ``stat.circus.<pid>`` / ``stat.circus``: the same for the supervisor (name
  ``"circusd"``) and the broker (``"chapiteau-broker"``, when it can be read);
* ``stat.sockets.<fd>``: ``{"fd", "subtopic", "reads", "address"}`` and
  ``stat.sockets``: ``{"addresses": [...], "reads": total}``.

What ``reads`` means here: for a TCP listening socket, the number of
connections waiting in its accept queue at the moment of the sample (the
kernel's ``tcpi_unacked`` of a listener, one ``getsockopt(TCP_INFO)``); for any
other socket, 1 if it was readable at that moment, else 0. Circus counted the
10 ms polls during which the socket was readable (0 to 100 per second); both say
"the workers are not keeping up" when they stay above zero, neither counts
requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shlex
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import structlog
import zmq
import zmq.asyncio

from chapiteau.supervisor.children import process_tree
from chapiteau.supervisor.endpoints.zmq_setup import Curve, EndpointError, prepare_endpoint
from chapiteau.supervisor.events import topic_name

log = structlog.get_logger("chapiteau.supervisor")

INTERVAL = 1.0
"""Seconds between two samples, as circusd-stats."""
SUPERVISOR_NAME = "circusd"
BROKER_NAME = "chapiteau-broker"
NOT_AVAILABLE = "N/A"
_SYMBOLS = ("K", "M", "G", "T", "P", "E", "Z", "Y")
_TCP_INFO_LENGTH = 104
_TCP_INFO_UNACKED = 24
"""Offset of tcpi_unacked: 8 bytes of u8 fields, then u32 rto, ato, snd_mss, rcv_mss."""
_TCP_LISTEN = 10
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_FIGURES = ("mem_info1", "mem_info2", "cpu", "mem", "ctime", "nice")
"""What a sample reads from /proc/PID/stat; all "N/A" when the kernel refuses it."""


def human_bytes(count: int) -> str:
    """Circus's ``bytes2human``: ``1450000`` → ``"1.38M"``, ``512`` → ``"512B"``."""
    for index in range(len(_SYMBOLS) - 1, -1, -1):
        unit = 1 << (index + 1) * 10
        if count >= unit:
            return f"{round(count / unit, 2):.2f}{_SYMBOLS[index]}"
    return f"{count}B"


def cpu_time_text(seconds: float) -> str:
    """Total CPU time as Circus prints it, ``M:SS.cc`` (minutes wrap at an hour, as Circus).

    Circus takes the first two digits of the unpadded microseconds, so 0.05 s
    and 0.5 s both print ``.50``; this pads them, so 0.05 s prints ``.05``.
    """
    whole = int(seconds)
    micro = round((seconds - whole) * 1_000_000)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    return f"{whole // 60 % 60}:{whole % 60:02d}.{micro:06d}"[:-4]


@dataclass
class _Tracked:
    """A process followed across samples, with what ``cpu`` is measured from."""

    cmdline: str | None
    """None until the kernel shows it: a process sampled right after its exec has
    closed the close-on-exec fds (what a spawn waits for) can have no command line
    yet, for a few microseconds; it is read again at the next sample."""
    username: str | int
    create_time: float | str
    cpu_seen: tuple[float, float] | None = None
    """(CPU seconds used, monotonic time) at the previous sample."""


class ProcessSampler:
    """Per-process info with Circus's field names and formats, cheap enough for every second.

    What cannot change after exec (command line, user, start time) is read
    once, with psutil; each sample is then one read of /proc/PID/stat (``cpu``
    is the percentage since the previous sample, as Circus).
    """

    def __init__(self) -> None:
        self._tracked: dict[int, _Tracked] = {}
        self._children: dict[int, list[int]] = {}
        self._total_memory = psutil.virtual_memory().total

    def sample(self, pid: int, children: bool = False) -> dict[str, Any] | None:
        """The info of ``pid``, or None if it no longer exists.

        With ``children``, the info of its direct children too (the ``stats``
        command's shape), found through /proc rather than a scan of every process.
        """
        try:
            tracked = self._tracked.get(pid)
            if tracked is None:
                tracked = self._track(pid)
            elif tracked.cmdline is None:
                tracked.cmdline = _command(psutil.Process(pid))
            info = self._info(pid, tracked)
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            self._tracked.pop(pid, None)
            return None
        if children:
            kids = process_tree.children(pid)
            for gone in set(self._children.get(pid, ())) - set(kids):
                self._tracked.pop(gone, None)
            self._children[pid] = kids
            info["children"] = [kid for kid in map(self.sample, kids) if kid]
        return info

    def forget(self, pid: int) -> None:
        """Drop ``pid`` (it exited) and the children it was last seen with."""
        self._tracked.pop(pid, None)
        for kid in self._children.pop(pid, ()):
            self._tracked.pop(kid, None)

    def forget_except(self, pids: Iterable[int]) -> None:
        """Drop every tracked pid not in ``pids`` (they exited)."""
        keep = set(pids)
        for pid in [pid for pid in self._tracked if pid not in keep]:
            del self._tracked[pid]

    def _track(self, pid: int) -> _Tracked:
        process = psutil.Process(pid)
        with process.oneshot():
            tracked = _Tracked(
                cmdline=_command(process),
                username=_read(process.username),
                create_time=_read(process.create_time),
            )
        self._tracked[pid] = tracked
        return tracked

    def _info(self, pid: int, tracked: _Tracked) -> dict[str, Any]:
        try:
            cpu_seconds, nice, vms, rss = proc_stat(pid)
        except PermissionError:
            figures = dict.fromkeys(_FIGURES, NOT_AVAILABLE)
        else:
            figures = {
                "mem_info1": human_bytes(rss),
                "mem_info2": human_bytes(vms),
                "cpu": _cpu_percent(tracked, cpu_seconds),
                "mem": round(rss / self._total_memory * 100, 3),
                "ctime": cpu_time_text(cpu_seconds),
                "nice": nice,
            }
        create_time = tracked.create_time
        return {
            **figures,
            "pid": pid,
            "username": tracked.username,
            "create_time": create_time,
            "age": NOT_AVAILABLE if isinstance(create_time, str) else time.time() - create_time,
            "cmdline": tracked.cmdline or NOT_AVAILABLE,
            "children": [],
        }


def proc_stat(pid: int) -> tuple[float, int, int, int]:
    """(CPU seconds, nice, virtual and resident bytes) of ``pid``, from /proc/PID/stat and statm.

    The figures psutil's cpu_times, nice and memory_info read (memory from statm:
    proc(5) calls the rss of stat inaccurate), at half the cost: this runs for
    every process of every ``stats``.
    """
    fields = process_tree.stat_fields(pid)
    utime, stime, nice = (int(fields[n - 3]) for n in (14, 15, 19))
    size, resident = process_tree.read_proc(f"/proc/{pid}/statm").split()[:2]
    return (utime + stime) / _CLOCK_TICKS, nice, int(size) * _PAGE_SIZE, int(resident) * _PAGE_SIZE


def _cpu_percent(tracked: _Tracked, used: float) -> float:
    """psutil's ``cpu_percent(None)`` (percent of one CPU since the previous sample, 0.0
    the first time), from the CPU seconds already read: no second look at /proc."""
    now = time.monotonic()
    previous, tracked.cpu_seen = tracked.cpu_seen, (used, now)
    if previous is None or now <= previous[1]:
        return 0.0
    return round((used - previous[0]) / (now - previous[1]) * 100, 1)


def _read(getter: Any) -> Any:
    """``getter()``, or ``"N/A"`` when the kernel refuses (Circus's AccessDenied rule)."""
    try:
        return getter()
    except psutil.AccessDenied:
        return NOT_AVAILABLE


def _command(process: psutil.Process) -> str | None:
    """Circus's ``cmdline``: the basename of the first word of argv[0]; None while the
    process has no command line yet (see `_Tracked.cmdline`)."""
    argv = _read(process.cmdline)
    if argv == NOT_AVAILABLE:
        return NOT_AVAILABLE
    if not argv:
        return None
    try:
        words = shlex.split(argv[0])
    except ValueError:
        words = argv[0].split()
    return os.path.basename(words[0]) if words else NOT_AVAILABLE


def aggregate(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Circus's per-watcher summary: pids, mean cpu, summed mem, oldest age; N/A propagates."""
    cpus = [info["cpu"] for info in infos]
    mems = [info["mem"] for info in infos]
    ages = [info["age"] for info in infos if info["age"] != NOT_AVAILABLE]
    if NOT_AVAILABLE in cpus:
        cpu: Any = NOT_AVAILABLE
    else:
        cpu = sum(cpus) / len(cpus) if cpus else 0.0
    return {
        "pid": [info["pid"] for info in infos],
        "cpu": cpu,
        "mem": NOT_AVAILABLE if NOT_AVAILABLE in mems else sum(mems),
        "age": max(ages) if ages else NOT_AVAILABLE,
    }


def socket_reads(sock: socket.socket) -> int:
    """The load figure of one listening socket (see the module docstring)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        with contextlib.suppress(OSError):
            raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
            if raw[0] == _TCP_LISTEN:
                return struct.unpack_from("=I", raw, _TCP_INFO_UNACKED)[0]
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return 0
    return 1 if readable else 0


def stat_topic(name: str, subtopic: int | None = None) -> str:
    """``stat.<name>[.<subtopic>]``, the watcher name as in Circus's event topics."""
    topic = f"stat.{topic_name(name)}"
    return topic if subtopic is None else f"{topic}.{subtopic}"


class StatsPublisher:
    """The ``stats_endpoint`` PUB socket and the one-second timer that feeds it."""

    def __init__(
        self, arbiter: Any, endpoint: str, context: zmq.Context, curve: Curve | None = None
    ) -> None:
        self.arbiter = arbiter
        self.endpoint = endpoint
        self.context = context
        self.curve = curve
        self.sampler = ProcessSampler()
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: dict[tuple[int, int], socket.socket] = {}
        self._own: dict[int, str | None] = {os.getpid(): SUPERVISOR_NAME}
        broker_pid = getattr(getattr(arbiter, "broker", None), "broker_pid", None)
        if broker_pid and _readable(broker_pid):
            self._own[broker_pid] = BROKER_NAME

    def open(self) -> None:
        """Bind the PUB socket and start the timer."""
        self._socket = zmq.asyncio.Socket(self.context, zmq.PUB)
        self._socket.linger = 0
        try:
            prepare_endpoint(self._socket, self.endpoint, self.curve, "stats_endpoint")
        except EndpointError:
            self._socket.close(linger=0)
            self._socket = None
            raise
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("stats_started", endpoint=self.endpoint)

    def close(self) -> None:
        """Stop the timer and close the socket (a no-op when stats are off)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += INTERVAL
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            try:
                messages = self.collect()
            except Exception as exc:  # a failed sample must not stop the stream
                log.error("stats_sample_failed", error=repr(exc))
                continue
            for topic, payload in messages:
                assert self._socket is not None
                await self._socket.send_multipart([topic.encode(), json.dumps(payload).encode()])

    def collect(self) -> list[tuple[str, dict[str, Any]]]:
        """One round of messages: every watcher with processes, circus itself, the sockets."""
        messages: list[tuple[str, dict[str, Any]]] = []
        alive: list[int] = []
        for watcher in sorted(self.arbiter.watchers.values(), key=lambda w: w.name):
            pids = sorted(watcher.processes)
            alive.extend(pids)
            messages.extend(self._group(watcher.name, {pid: None for pid in pids}))
        alive.extend(self._own)
        messages.extend(self._group("circus", self._own))
        self.sampler.forget_except(alive)
        messages.extend(self._socket_stats())
        return messages

    def _group(self, name: str, pids: dict[int, str | None]) -> list[tuple[str, dict[str, Any]]]:
        messages = []
        infos = []
        for pid, process_name in pids.items():
            info = self.sampler.sample(pid)
            if info is None:
                continue
            infos.append(info)
            messages.append(
                (stat_topic(name, pid), {**info, "subtopic": pid, "name": process_name})
            )
        if infos:
            messages.append((stat_topic(name), aggregate(infos)))
        return messages

    def _socket_stats(self) -> list[tuple[str, dict[str, Any]]]:
        received = sorted(self.arbiter.sockets.sockets.values(), key=lambda r: r.fd)
        if not received:
            return []
        current = {(r.fd, r.info.inode) for r in received}
        for key in [key for key in self._sockets if key not in current]:
            self._sockets.pop(key).close()
        messages = []
        total: dict[str, Any] = {"addresses": [], "reads": 0}
        for entry in received:
            key = (entry.fd, entry.info.inode)
            sock = self._sockets.get(key)
            if sock is None:
                sock = self._sockets[key] = socket.socket(fileno=os.dup(entry.fd))
            info = entry.info
            address = info.path if info.path else f"{info.host}:{info.port}"
            reads = socket_reads(sock)
            total["addresses"].append(address)
            total["reads"] += reads
            payload = {"fd": entry.fd, "subtopic": entry.fd, "reads": reads, "address": address}
            messages.append((stat_topic("sockets", entry.fd), payload))
        messages.append((stat_topic("sockets"), total))
        return messages


def _readable(pid: int) -> bool:
    try:
        psutil.Process(pid).memory_info()
    except psutil.Error:
        return False
    return True


class _NoStats:
    """What ``start_stats`` returns when stats are off: no socket, no timer."""

    def close(self) -> None:
        """Nothing to stop."""


async def start_stats(arbiter: Any) -> StatsPublisher | _NoStats:
    """Start publishing if ``[circus] statsd`` is on; the result's ``close()`` stops it.

    The endpoint gets the control endpoint's CURVE settings and ZMQ context (so
    its authenticator); a bind failure is an `EndpointError` naming
    ``stats_endpoint``.
    """
    options = arbiter.config.circus
    if not options.statsd:
        return _NoStats()
    controller = arbiter.controller
    publisher = StatsPublisher(
        arbiter, options.stats_endpoint, controller.context, controller.curve
    )
    publisher.open()
    return publisher
