"""The stats stream: Circus's field formats, the per-tick messages, the PUB endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import zmq

from chapiteau.protocol.broker_messages import SocketInfo
from chapiteau.supervisor.broker_client import ReceivedSocket
from chapiteau.supervisor.endpoints.stats import (
    ProcessSampler,
    aggregate,
    cpu_time_text,
    human_bytes,
    socket_reads,
    start_stats,
    stat_topic,
)

CIRCUS_FIELDS = {
    "mem_info1", "mem_info2", "cpu", "mem", "ctime", "pid", "username", "nice",
    "create_time", "age", "cmdline", "children",
}  # fmt: skip


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0B"), (1023, "1023B"), (1024, "1.00K"), (1450000, "1.38M"), (3 << 30, "3.00G")],
)
def test_human_bytes_matches_circus(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0:00.00"), (1.2, "0:01.20"), (61.05, "1:01.05"), (3600 + 5.999, "0:05.99")],
)
def test_cpu_time_is_minutes_seconds_centiseconds(seconds: float, text: str) -> None:
    assert cpu_time_text(seconds) == text


def test_aggregate_is_mean_cpu_summed_mem_oldest_age() -> None:
    infos = [
        {"pid": 1, "cpu": 1.0, "mem": 0.5, "age": 3.0},
        {"pid": 2, "cpu": 3.0, "mem": 1.0, "age": 9.0},
    ]
    assert aggregate(infos) == {"pid": [1, 2], "cpu": 2.0, "mem": 1.5, "age": 9.0}


def test_aggregate_propagates_not_available() -> None:
    infos = [{"pid": 1, "cpu": "N/A", "mem": "N/A", "age": "N/A"}]
    assert aggregate(infos) == {"pid": [1], "cpu": "N/A", "mem": "N/A", "age": "N/A"}


def test_stat_topic_uses_event_style_watcher_names() -> None:
    assert (stat_topic("My Web", 12), stat_topic("sockets")) == ("stat.my_web.12", "stat.sockets")


def _running(argv: list[str], name: str) -> subprocess.Popen:
    """``argv`` started, once its process runs ``name`` with its command line in place.
    Popen returns once the exec has closed the close-on-exec fds, before the kernel has
    set up the new command line: a sample in between reads none."""
    child = subprocess.Popen(argv)
    deadline = time.monotonic() + 5
    while psutil.Process(child.pid).cmdline()[:1] != [name]:
        assert time.monotonic() < deadline, f"{argv[0]} never exec'd {name}"
        time.sleep(0.005)
    return child


def test_sampler_reports_circus_fields_of_a_live_process() -> None:
    child = _running(["sleep", "30"], "sleep")
    try:
        info = ProcessSampler().sample(child.pid)
    finally:
        child.kill()
        child.wait()
    assert info is not None and set(info) == CIRCUS_FIELDS
    assert (info["pid"], info["cmdline"], info["children"]) == (child.pid, "sleep", [])
    assert info["mem_info1"][-1] in "BKMG" and isinstance(info["mem"], float)


def test_sampler_figures_are_the_ones_psutil_reads() -> None:
    child = _running(["nice", "-n", "7", "sleep", "30"], "sleep")
    try:
        os.kill(child.pid, signal.SIGSTOP)  # nothing changes between the two reads
        info = ProcessSampler().sample(child.pid)
        process = psutil.Process(child.pid)
        memory, times = process.memory_info(), process.cpu_times()
        expected = {
            "mem_info1": human_bytes(memory.rss),
            "mem_info2": human_bytes(memory.vms),
            "ctime": cpu_time_text(times.user + times.system),
            "nice": process.nice(),
        }
    finally:
        child.kill()
        child.wait()
    assert info is not None and {key: info[key] for key in expected} == expected
    assert info["nice"] == 7


def test_sampler_cpu_is_percent_since_previous_sample() -> None:
    busy = subprocess.Popen(["python3", "-c", "while True: pass"])
    sampler = ProcessSampler()
    try:
        first = sampler.sample(busy.pid)
        time.sleep(0.5)
        second = sampler.sample(busy.pid)
    finally:
        busy.kill()
        busy.wait()
    assert first is not None and second is not None
    # The first sample has no previous one (0.0, as Circus); a busy loop then shows, even
    # on a loaded machine where it gets only part of a CPU.
    assert first["cpu"] == 0.0 and second["cpu"] > 5


def test_sampler_returns_none_for_a_gone_process() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert ProcessSampler().sample(child.pid) is None


def test_listening_tcp_socket_reads_count_the_accept_queue() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        assert socket_reads(server) == 0
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        time.sleep(0.05)
        assert socket_reads(server) == 3
        for client in clients:
            client.close()


def test_unix_socket_reads_say_whether_a_connection_waits(tmp_path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(4)
        assert socket_reads(server) == 0
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            assert socket_reads(server) == 1


# -- the publisher, with a small stand-in for the arbiter ------------------------------------


@dataclass
class StandIn:
    """What the publisher reads of the arbiter: config, watchers' pids, sockets, broker."""

    statsd: bool
    endpoint: str
    watchers: dict[str, Any] = field(default_factory=dict)
    sockets: Any = None
    broker: Any = None
    controller: Any = None

    def __post_init__(self) -> None:
        self.config = SimpleNamespace(
            circus=SimpleNamespace(statsd=self.statsd, stats_endpoint=self.endpoint)
        )
        if self.sockets is None:
            self.sockets = SimpleNamespace(sockets={})
        if self.controller is None:
            self.controller = SimpleNamespace(context=zmq.asyncio.Context.instance(), curve=None)


def _watcher(name: str, pids: list[int]) -> Any:
    return SimpleNamespace(name=name, processes={pid: None for pid in pids})


def _free_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def test_stats_off_binds_nothing() -> None:
    endpoint = _free_endpoint()

    async def scenario() -> None:
        publisher = await start_stats(StandIn(statsd=False, endpoint=endpoint))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
        publisher.close()

    asyncio.run(scenario())


def test_collect_publishes_watchers_circus_and_sockets() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    inode = os.fstat(listener.fileno()).st_ino
    info = SocketInfo("web", "AF_INET", "SOCK_STREAM", host="127.0.0.1", port=port, inode=inode)
    arbiter = StandIn(
        statsd=True,
        endpoint=_free_endpoint(),
        watchers={"web": _watcher("Web", [sleeper.pid])},
        sockets=SimpleNamespace(sockets={"web": ReceivedSocket(listener.fileno(), info)}),
    )

    async def scenario() -> list[tuple[str, dict]]:
        publisher = await start_stats(arbiter)
        try:
            return publisher.collect()
        finally:
            publisher.close()

    fd = listener.fileno()
    try:
        messages = dict(asyncio.run(scenario()))
    finally:
        sleeper.kill()
        sleeper.wait()
        listener.close()
    process = messages[f"stat.web.{sleeper.pid}"]
    assert set(process) == CIRCUS_FIELDS | {"subtopic", "name"}
    assert (process["subtopic"], process["name"]) == (sleeper.pid, None)
    assert messages["stat.web"]["pid"] == [sleeper.pid]
    assert messages[f"stat.circus.{os.getpid()}"]["name"] == "circusd"
    assert messages["stat.circus"]["pid"] == [os.getpid()]
    assert messages[f"stat.sockets.{fd}"]["address"] == f"127.0.0.1:{info.port}"
    assert messages["stat.sockets"]["addresses"] == [f"127.0.0.1:{info.port}"]


def test_stream_reaches_a_subscriber_every_second() -> None:
    endpoint = _free_endpoint()
    arbiter = StandIn(statsd=True, endpoint=endpoint, watchers={"idle": _watcher("idle", [])})

    async def scenario() -> list[bytes]:
        publisher = await start_stats(arbiter)
        context = zmq.asyncio.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"stat.")
        sub.connect(endpoint)
        topics = []
        try:
            deadline = time.monotonic() + 5
            while len(topics) < 2 and time.monotonic() < deadline:
                topic, payload = await asyncio.wait_for(sub.recv_multipart(), 5)
                json.loads(payload)
                topics.append(topic)
        finally:
            sub.close(linger=0)
            context.term()
            publisher.close()
        return topics

    topics = asyncio.run(scenario())
    assert topics[:2] == [f"stat.circus.{os.getpid()}".encode(), b"stat.circus"]


def test_a_command_line_not_set_up_yet_is_read_again_at_the_next_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Right after a spawn the kernel can show no command line for a few microseconds
    # (the exec has closed the close-on-exec fds, not yet set up argv): what the first
    # call gives here.
    child = _running(["sleep", "30"], "sleep")
    cmdline = psutil.Process.cmdline
    calls: list[int] = []

    def not_yet_then_real(process: psutil.Process) -> list[str]:
        calls.append(process.pid)
        return [] if len(calls) == 1 else cmdline(process)

    monkeypatch.setattr(psutil.Process, "cmdline", not_yet_then_real)
    sampler = ProcessSampler()
    try:
        first, second, third = (sampler.sample(child.pid) for _ in range(3))
    finally:
        child.kill()
        child.wait()
    assert first is not None and second is not None and third is not None
    assert [first["cmdline"], second["cmdline"], third["cmdline"]] == ["N/A", "sleep", "sleep"]
    assert calls == [child.pid, child.pid]
