"""Prometheus metrics: scrape /metrics of the real daemon and check it against /proc and `list`.

The scrape is parsed with the Prometheus client's own parser. /proc is read
just before and just after each scrape: CPU time only grows, so the figure
served must lie between the two readings, and the memory and fds of a worker
asleep between them must equal theirs.
"""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.harness import free_port, proc_status
from tests.waiting import wait_until

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Each worker burns a little CPU, then sleeps: its CPU time, memory and fds stay put.
WATCHERS = """
[watcher:sleeper]
cmd = sh -c 'i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; exec sleep 1000'
numprocesses = 3

[watcher:idle]
cmd = sleep 1000
numprocesses = 2
autostart = false
"""


def scrape(port: int) -> dict[str, Any]:
    """The samples of GET /metrics: {(name, frozen labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def process_labels(samples: dict[str, Any], watcher: str) -> dict[int, str]:
    """pid → wid of the processes ``chapiteau_process_open_fds`` lists for ``watcher``."""
    found = {}
    for name, labels in samples:
        tags = dict(labels)
        if name == "chapiteau_process_open_fds" and tags["watcher"] == watcher:
            found[int(tags["pid"])] = tags["wid"]
    return found


def proc_figures(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, resident bytes, open fds) of ``pid``, read from /proc as ps would."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = int(proc_status(pid)["VmRSS"].split()[0]) * 1024
    return cpu, rss, len(os.listdir(f"/proc/{pid}/fd"))


def asleep(pid: int) -> bool:
    """Whether worker ``pid`` has done its busy loop and runs ``sleep``."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().split(b"\0")[0] == b"sleep"


@pytest.fixture
def metrics(daemon):
    port = free_port()
    running = daemon(WATCHERS, circus=f"metrics_endpoint = 127.0.0.1:{port}")
    running.tree.wait_for("metrics_started")
    return running, port


def test_the_figures_served_are_those_of_proc_and_the_counts_those_of_list(metrics):
    running, port = metrics
    pids = sorted(running.tree.worker_pids("sleeper", 3))
    # Measured once asleep: the CPU burnt, then exec'd `sleep` (spawned is not enough).
    wait_until(lambda: all(asleep(pid) for pid in pids), what="the workers to sleep")
    listed = running.call("list", name="sleeper")
    assert sorted(listed["pids"]) == pids
    assert running.call("dance")["status"] == "error"

    before = {pid: proc_figures(pid) for pid in pids}
    samples = scrape(port)
    after = {pid: proc_figures(pid) for pid in pids}

    assert sorted(process_labels(samples, "sleeper")) == pids
    for pid, wid in process_labels(samples, "sleeper").items():
        labels = {"watcher": "sleeper", "pid": str(pid), "wid": wid}
        cpu = value(samples, "chapiteau_process_cpu_seconds_total", **labels)
        assert before[pid][0] <= cpu <= after[pid][0]
        assert after[pid][0] > 0
        assert before[pid][1] == after[pid][1]
        assert value(samples, "chapiteau_process_resident_memory_bytes", **labels) == after[pid][1]
        assert before[pid][2] == after[pid][2]
        assert value(samples, "chapiteau_process_open_fds", **labels) == after[pid][2]
    assert sorted(wid for wid in process_labels(samples, "sleeper").values()) == ["1", "2", "3"]

    for watcher, wanted, running_count, phase in (
        ("sleeper", 3, 3, "active"),
        ("idle", 2, 0, "stopped"),
    ):
        assert value(samples, "chapiteau_watcher_processes_wanted", watcher=watcher) == wanted
        assert (
            value(samples, "chapiteau_watcher_processes_running", watcher=watcher) == running_count
        )
        assert value(samples, "chapiteau_watcher_processes_ready", watcher=watcher) == running_count
        assert value(samples, "chapiteau_watcher_restarts_total", watcher=watcher) == 0
        assert value(samples, "chapiteau_watcher_phase", watcher=watcher, phase=phase) == 1
        assert value(samples, "chapiteau_watcher_phase", watcher=watcher, phase="failed") == 0
    assert value(samples, "chapiteau_control_requests_total", command="list", outcome="ok") == 1
    assert (
        value(samples, "chapiteau_control_requests_total", command="unknown", outcome="error") == 1
    )
    assert value(samples, "chapiteau_broker_supervisor_restarts_total") == 0


def test_a_killed_worker_counts_as_a_restart(metrics):
    running, port = metrics
    victim = running.tree.worker_pids("sleeper", 3)[0]
    os.kill(victim, signal.SIGKILL)
    running.tree.wait_for("process_reaped", where=lambda e: e["pid"] == victim)
    running.tree.worker_pids("sleeper", 3)

    samples = scrape(port)
    assert value(samples, "chapiteau_watcher_restarts_total", watcher="sleeper") == 1
    assert victim not in process_labels(samples, "sleeper")
    assert len(process_labels(samples, "sleeper")) == 3


def test_a_supervisor_restarted_by_the_broker_says_so(metrics):
    running, port = metrics
    os.kill(running.tree.supervisor_pid(), signal.SIGKILL)
    pid = running.tree.wait_for("supervisor_started", where=lambda e: e["start"] == 2)[-1]["pid"]
    running.tree.wait_for("metrics_started", count=2)
    running.tree.wait_for("supervisor_ready", where=lambda e: e["pid"] == pid)

    samples = scrape(port)
    assert value(samples, "chapiteau_broker_supervisor_restarts_total") == 1


def test_anything_but_get_metrics_is_refused(metrics):
    _, port = metrics
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert refused.value.code == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    assert scrape(port)
