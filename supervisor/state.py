"""The snapshot one supervisor generation leaves to the next, as data and pure functions.

Theory of operation. The supervisor keeps a JSON snapshot of what its
successor needs to adopt the running workers: per watcher, its phase (did an
operator stop it), the options changed at run time by ``set``/``incr``/``decr``,
how to stop it, its restart counts; per process, its pid, wid, start time
(epoch, as ``status`` shows it, and the kernel's ``starttime`` from
/proc/PID/stat, which tells a recycled pid apart) and the keys under which the
broker holds its output pipes; and the address of the supervisor's
NOTIFY_SOCKET, which the workers keep in their environment, so that the next
generation listens on the same one (`chapiteau.supervisor.io.notify`). The
broker holds the snapshot in a memfd it never reads
(`chapiteau.supervisor.handover`).

Two memfds (``STATE_KEYS``) are written in turn, each snapshot with a serial
one above the last: a supervisor killed in the middle of a write leaves the
other one whole, and `newest` takes the highest serial that decodes. A
process's part is encoded once (`encode_process`) and the snapshot is the join
of those parts, so writing it after every spawn stays cheap at thousands of
processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

STATE_VERSION = 1
STATE_KEYS = ("state.0", "state.1")
"""The broker keys of the two memfds the snapshot is written to in turn."""


@dataclass(frozen=True)
class ProcessRecord:
    """One running worker, as its next supervisor must know it."""

    pid: int
    wid: int
    started: float
    """Epoch seconds."""
    starttime: int
    """/proc/PID/stat starttime: with the pid, names the process for good."""
    stdout: str | None = None
    """The broker key of its stdout pipe's read end; None when it has none."""
    stderr: str | None = None
    doors: dict[str, int] = field(default_factory=dict)
    """Socket name → the steering slot its socket holds (`chapiteau.supervisor.doors`)."""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key in (self.stdout, self.stderr) if key is not None)


@dataclass(frozen=True)
class WatcherRecord:
    """One watcher: what was changed at run time, and its processes."""

    name: str
    phase: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """Options as ``set`` (and ``numprocesses`` as ``incr``/``decr``) received them."""
    stop_signal: int = 15
    graceful_timeout: float = 30.0
    spawns: dict[int, int] = field(default_factory=dict)
    """By wid: processes spawned since the watcher started (restarts + 1)."""
    restarts: int = 0
    processes: tuple[ProcessRecord, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    serial: int
    watchers: tuple[WatcherRecord, ...] = ()
    notify_socket: str | None = None
    """The NOTIFY_SOCKET address (an abstract name, "@..."); None when none was open."""


def encode_process(record: ProcessRecord) -> bytes:
    """One process's part of a snapshot (kept by the watcher and joined at each write)."""
    return _json(vars(record))


def decode_process(data: bytes) -> ProcessRecord:
    """What `encode_process` wrote."""
    return _process(json.loads(data))


def encode(
    serial: int,
    watchers: Iterable[tuple[WatcherRecord, Iterable[bytes]]],
    notify_socket: str | None = None,
) -> bytes:
    """A snapshot of ``watchers``: each a record (its ``processes`` ignored) with the
    encoded parts of its processes; ``notify_socket``: the open NOTIFY_SOCKET's address."""
    parts = []
    for record, processes in watchers:
        head = {key: value for key, value in vars(record).items() if key != "processes"}
        head["spawns"] = {str(wid): count for wid, count in record.spawns.items()}
        parts.append(_json(head)[:-1] + b',"processes":[' + b",".join(processes) + b"]}")
    head = b'{"version":%d,"serial":%d,"notify_socket":%s,"watchers":[' % (
        STATE_VERSION,
        serial,
        _json(notify_socket),
    )
    return head + b",".join(parts) + b"]}"


def decode(data: bytes) -> Snapshot | None:
    """The snapshot in ``data``; None when it is not one (empty, cut short, another version)."""
    try:
        body = json.loads(data)
        if body["version"] != STATE_VERSION:
            return None
        return Snapshot(
            int(body["serial"]),
            tuple(_watcher(w) for w in body["watchers"]),
            _abstract_name(body.get("notify_socket")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def newest(blobs: Iterable[bytes]) -> Snapshot | None:
    """The snapshot with the highest serial among those that decode."""
    snapshots = [s for s in map(decode, blobs) if s is not None]
    return max(snapshots, key=lambda s: s.serial, default=None)


def _watcher(obj: dict[str, Any]) -> WatcherRecord:
    overrides = obj["overrides"]
    if not isinstance(overrides, dict):
        raise TypeError("overrides")
    return WatcherRecord(
        name=str(obj["name"]),
        phase=str(obj["phase"]),
        overrides=overrides,
        stop_signal=int(obj["stop_signal"]),
        graceful_timeout=float(obj["graceful_timeout"]),
        spawns={int(wid): int(count) for wid, count in obj["spawns"].items()},
        restarts=int(obj["restarts"]),
        processes=tuple(_process(p) for p in obj["processes"]),
    )


def _process(obj: dict[str, Any]) -> ProcessRecord:
    return ProcessRecord(
        pid=int(obj["pid"]),
        wid=int(obj["wid"]),
        started=float(obj["started"]),
        starttime=int(obj["starttime"]),
        stdout=_optional_str(obj["stdout"]),
        stderr=_optional_str(obj["stderr"]),
        doors={str(name): int(slot) for name, slot in obj.get("doors", {}).items()},
    )


def _abstract_name(value: Any) -> str | None:
    """An abstract socket name ("@..."); None for anything else (a snapshot written before
    the address was recorded has none)."""
    return value if isinstance(value, str) and value.startswith("@") and len(value) > 1 else None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
