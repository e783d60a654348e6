"""Serve Prometheus metrics over HTTP: ``GET /metrics`` on ``[circus] metrics_endpoint``.

Off by default; needs the optional extra ``chapiteau[metrics]`` (the standard
``prometheus_client``), which the config loader checks for. The figures are
read when a scrape asks for them, from what the supervisor already holds (the
watchers, their pids, the request counts) and, per process, one read of
/proc/PID/stat and statm (`chapiteau.supervisor.endpoints.stats.proc_stat`,
the stats stream's reader) and one listing of /proc/PID/fd: a scrape costs
O(processes) and nothing runs between scrapes. The server is asyncio's, in the
supervisor's loop, so a scrape sees the watchers between two events, never
half-way through one.

What is exported (every name starts with ``chapiteau_``):

* per watcher: ``watcher_processes_wanted``, ``watcher_processes_running``,
  ``watcher_processes_ready`` (the ready ones: running, with ``readiness =
  notify`` once they said READY=1, after ``ready_delay`` if set),
  ``watcher_restarts_total`` (processes that exited unasked and
  were replaced) and ``watcher_phase`` (1 for the lifecycle phase the watcher
  is in, 0 for the others);
* per process (labels ``watcher``, ``pid``, ``wid``):
  ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
  ``process_open_fds``; a process the supervisor may not read (another user's)
  is left out;
* ``control_requests_total`` by ``command`` and ``outcome`` (``ok``/``error``);
* ``broker_supervisor_restarts_total``: how many supervisors the broker
  started before this one (absent when the broker did not say, in connect mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from chapiteau.supervisor.endpoints.stats import proc_stat
from chapiteau.supervisor.endpoints.zmq_setup import EndpointError
from chapiteau.supervisor.lifecycle import Phase

log = structlog.get_logger("chapiteau.supervisor")

PATH = b"/metrics"
REQUEST_LIMIT = 8192
"""Bytes a request line and its headers may take; a longer request is dropped."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send its request, then to take the reply."""
MAX_CLIENTS = 16
"""Connections served at once; more are closed at once (a scraper needs one)."""


class ArbiterCollector:
    """A prometheus_client collector that reads the arbiter at each scrape."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the module docstring, for the watchers as they are now."""
        watchers = sorted(self.arbiter.watchers.values(), key=lambda w: w.name)
        yield from self._watchers(watchers)
        yield from self._processes(watchers)
        requests = CounterMetricFamily(
            "chapiteau_control_requests",
            "Control requests answered, by command and outcome.",
            labels=["command", "outcome"],
        )
        for (command, outcome), count in sorted(self.arbiter.requests.items()):
            requests.add_metric([command, outcome], count)
        yield requests
        start = self.arbiter.supervisor_start
        if start is not None:
            yield CounterMetricFamily(
                "chapiteau_broker_supervisor_restarts",
                "Supervisors the broker started before this one.",
                value=start - 1,
            )

    def _watchers(self, watchers: list[Any]) -> Iterator[Metric]:
        label = ["watcher"]
        wanted = GaugeMetricFamily(
            "chapiteau_watcher_processes_wanted", "numprocesses of the watcher.", labels=label
        )
        running = GaugeMetricFamily(
            "chapiteau_watcher_processes_running", "Processes of the watcher alive.", labels=label
        )
        ready = GaugeMetricFamily(
            "chapiteau_watcher_processes_ready",
            "Processes ready to serve (see the readiness option).",
            labels=label,
        )
        restarts = CounterMetricFamily(
            "chapiteau_watcher_restarts",
            "Processes that exited without being asked to and were replaced.",
            labels=label,
        )
        phase = GaugeMetricFamily(
            "chapiteau_watcher_phase",
            "1 for the lifecycle phase the watcher is in, 0 for the others.",
            labels=["watcher", "phase"],
        )
        for watcher in watchers:
            name = [watcher.name]
            lifecycle = watcher.lifecycle
            wanted.add_metric(name, watcher.config.numprocesses)
            running.add_metric(name, len(watcher.processes))
            ready.add_metric(name, lifecycle.ready())
            restarts.add_metric(name, lifecycle.restarts)
            for each in Phase:
                phase.add_metric([watcher.name, each.value], int(each is lifecycle.phase))
        yield from (wanted, running, ready, restarts, phase)

    def _processes(self, watchers: list[Any]) -> Iterator[Metric]:
        labels = ["watcher", "pid", "wid"]
        cpu = CounterMetricFamily(
            "chapiteau_process_cpu_seconds",
            "User and system CPU time of the process.",
            labels=labels,
        )
        rss = GaugeMetricFamily(
            "chapiteau_process_resident_memory_bytes",
            "Resident memory of the process.",
            labels=labels,
        )
        fds = GaugeMetricFamily(
            "chapiteau_process_open_fds", "Open file descriptors of the process.", labels=labels
        )
        for watcher in watchers:
            for pid, process in sorted(watcher.processes.items()):
                try:
                    cpu_seconds, _, _, resident = proc_stat(pid)
                    open_fds = len(os.listdir(f"/proc/{pid}/fd"))
                except OSError:  # gone since, or another user's
                    continue
                values = [watcher.name, str(pid), str(process.wid)]
                cpu.add_metric(values, cpu_seconds)
                rss.add_metric(values, resident)
                fds.add_metric(values, open_fds)
        yield from (cpu, rss, fds)


class MetricsServer:
    """The HTTP server of ``/metrics``, in the supervisor's event loop."""

    def __init__(self, arbiter: Any, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ArbiterCollector(arbiter))
        self._server: asyncio.Server | None = None
        self.clients: set[asyncio.Task[Any]] = set()
        """The connections being answered (at most MAX_CLIENTS)."""

    async def open(self) -> None:
        """Listen; a refused bind is an `EndpointError` naming ``metrics_endpoint``."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=REQUEST_LIMIT
            )
        except OSError as exc:
            raise EndpointError(
                f"metrics_endpoint {self.host}:{self.port}: {exc.strerror or exc}; "
                "choose another address in [circus] metrics_endpoint"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]  # the one chosen for port 0
        log.info("metrics_started", host=self.host, port=self.port)

    def close(self) -> None:
        """Stop listening and drop the connections being served."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self.clients):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.clients) >= MAX_CLIENTS:
            writer.close()
            return
        self.clients.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            writer.write(self.response(head))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # the client went away, sent too much, or too slowly: nothing to answer
        finally:
            self.clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def response(self, head: bytes) -> bytes:
        """The whole HTTP/1.0 reply to a request whose line and headers are ``head``."""
        words = head.split(b"\r\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            return _reply(b"400 Bad Request", b"text/plain", b"bad request\n")
        method, target = words[0], words[1].split(b"?", 1)[0]
        if target != PATH:
            return _reply(b"404 Not Found", b"text/plain", b"metrics are at /metrics\n")
        if method != b"GET":
            return _reply(b"405 Method Not Allowed", b"text/plain", b"use GET\n")
        return _reply(b"200 OK", CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry))


def _reply(status: bytes, content_type: bytes, body: bytes) -> bytes:
    headers = [
        b"HTTP/1.0 " + status,
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
        b"Connection: close",
    ]
    return b"\r\n".join(headers) + b"\r\n\r\n" + body
