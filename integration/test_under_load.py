"""Operations on a watcher of real HTTP servers under a real load: no request fails.

wrk (`integration/load.py`) keeps 32 connections busy on the watcher's socket
while the test reloads, recycles, resizes or kills; each test then asserts that
no request failed (refused, reset, unanswered or not 2xx) and that every server
process is managed (`integration/managed.py`): the processes chapiteau lists
are exactly the servers' processes in /proc, none left outside. Timings are
the bench's business (``bench/zero_downtime.py``), not asserted here.

The servers are real ones, each taking the socket its own way: gunicorn's sync
worker (``--bind fd://``), uvicorn (``--fd``), and a small server that reads
LISTEN_FDS/LISTEN_PID exactly as sd_listen_fds(3) does
(``socket_protocol = systemd``; ``integration/apps/sd_listen_fds_server.py``).
uvicorn's socket is ``so_reuseport``: its graceful shutdown resets the
connections it accepted and has not read yet, so it must stop with none, which
steering gives (each worker's own socket leaves the steering ``drain_delay``
before the stop signal; docs/zero-downtime.md).

A new case: ``served = serve("gunicorn")``, ``loaded(served, operation)`` (the
operation runs 1 s into the load, which goes on 1 s after it returns), then
``served.all_managed(4)``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.conftest import Daemon
from integration.harness import Chapiteau, free_port, is_alive, kill_together, wait_until
from integration.load import Load
from integration.managed import MARK, assert_all_managed, marked

APPS = Path(__file__).resolve().parent / "apps"
CTL = Path(sys.executable).parent / "chapiteauctl"
PYTHON = sys.executable
SERVERS = {
    "gunicorn": (
        f"{PYTHON} -m gunicorn --bind fd://$(circus.sockets.web) -w 1 -k sync "
        "--log-level warning hello:wsgi",
        "",
        "",
    ),
    "uvicorn": (
        f"{PYTHON} -m uvicorn --fd $(circus.sockets.web) --lifespan off --no-access-log "
        "--log-level warning hello:asgi",
        "",
        "so_reuseport = true",
    ),
    "sd_listen_fds": (f"{PYTHON} sd_listen_fds_server.py", "socket_protocol = systemd", ""),
}
SECONDS = 4
"""How long each load lasts at least; the operation starts 1 s into it."""


@dataclass
class Served:
    """A watcher ``web`` of real servers on a loopback port, its processes marked."""

    daemon: Daemon
    url: str
    mark: str
    watchers: Callable[..., str]

    def call(self, command: str, timeout: float = 60, **properties: object) -> dict:
        reply = self.daemon.control.call(command, timeout, **properties)
        assert reply["status"] == "ok", reply
        return reply

    def pids(self) -> list[int]:
        return self.call("list", name="web")["pids"]

    def all_managed(self, count: int | None) -> set[int]:
        return assert_all_managed(self.pids, self.mark, count)


@pytest.fixture
def serve(daemon, workdir: Path) -> Callable[..., Served]:
    """Start chapiteau with ``numprocesses`` of ``server`` (a key of SERVERS) on a new port."""
    for app in APPS.glob("*.py"):
        shutil.copy(app, workdir / app.name)
        (workdir / app.name).chmod(0o644)

    def start(server: str, numprocesses: int = 4, extra: str = "", env: str = "") -> Served:
        cmd, protocol, socket_options = SERVERS[server]
        port = free_port()
        mark = uuid.uuid4().hex

        def watchers(numprocesses: int = numprocesses, extra: str = extra, env: str = env) -> str:
            return (
                f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n{socket_options}\n\n"
                f"[watcher:web]\ncmd = {cmd}\nnumprocesses = {numprocesses}\n"
                f"use_sockets = true\nworking_dir = {workdir}\ngraceful_timeout = 10\n"
                f"{protocol}\n{extra}\n\n[env:web]\n{MARK} = {mark}\n{env}\n"
            )

        served = Served(daemon(watchers()), f"http://127.0.0.1:{port}/", mark, watchers)
        served.all_managed(numprocesses)
        return served

    return start


def loaded(served: Served, operation: Callable[[], object]) -> None:
    """Run ``operation`` 1 s into a load of at least SECONDS; assert that nothing failed."""
    with Load(served.url, seconds=SECONDS) as load:
        time.sleep(1)
        operation()
    assert load.result.failed == 0, f"{load.result}"
    assert load.result.requests > 0, f"{load.result}"


ALL_SERVERS = list(SERVERS)


@pytest.mark.parametrize("server", ALL_SERVERS)
def test_graceful_reload(serve, server: str):
    served = serve(server)
    before = served.pids()
    loaded(served, lambda: served.call("reload", name="web", graceful=True, waiting=True))
    assert not served.all_managed(4) & set(before)


def test_sequential_reload_of_8_workers(serve):
    served = serve("gunicorn", numprocesses=8)
    before = served.pids()
    loaded(
        served,
        lambda: served.call(
            "reload", timeout=120, name="web", graceful=True, sequential=True, waiting=True
        ),
    )
    assert not served.all_managed(8) & set(before)


def test_max_age_recycling(serve):
    served = serve("gunicorn", extra="max_age = 2\nmax_age_variance = 0")
    before = set(served.pids())

    def every_worker_recycled() -> None:
        deadline = time.monotonic() + 30
        while before & set(served.pids()):
            assert time.monotonic() < deadline, "max_age did not recycle every worker in 30 s"
            time.sleep(0.05)

    loaded(served, every_worker_recycled)
    # Recycling goes on: at times a replacement runs beside the process it replaces.
    served.all_managed(None)


def test_reloadconfig_of_a_changed_watcher(serve):
    served = serve("gunicorn", env="GREETING = one")
    before = served.pids()

    def reloadconfig() -> None:
        served.daemon.rewrite_config(served.watchers(env="GREETING = two"))
        served.call("reloadconfig", waiting=True)

    loaded(served, reloadconfig)
    pids = served.all_managed(4)
    assert not pids & set(before)
    assert all(_environ_has(pid, "GREETING=two") for pid in pids)


def test_incr_then_decr(serve):
    served = serve("gunicorn")

    def incr_then_decr() -> None:
        assert served.call("incr", name="web", nb=2, waiting=True)["numprocesses"] == 6
        served.all_managed(6)
        assert served.call("decr", name="web", nb=2, waiting=True)["numprocesses"] == 4

    loaded(served, incr_then_decr)
    served.all_managed(4)


def test_kill_9_of_one_worker(serve):
    """gunicorn's master is the watcher's process; its worker finishes the request in hand."""
    served = serve("gunicorn")
    victim = served.pids()[0]

    def kill() -> None:
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim in served.pids() or len(served.pids()) < 4:
            assert time.monotonic() < deadline, "the killed worker was not replaced in 30 s"
            time.sleep(0.05)

    loaded(served, kill)
    assert victim not in served.all_managed(4)


def _next_supervisor(served: Served, generation: int) -> None:
    """Wait until supervisor number ``generation`` has adopted the workers and answers."""
    tree = served.daemon.tree
    started = tree.wait_for("supervisor_started", where=lambda e: e["start"] == generation)
    tree.wait_for("adopted", count=generation - 1)
    pid = started[-1]["pid"]
    wait_until(lambda: served.call("dstats").get("info", {}).get("pid") == pid)


@pytest.mark.parametrize("server", ALL_SERVERS)
def test_kill_9_of_the_supervisor(serve, server: str):
    """The workers serve on, and the next supervisor manages the very same processes."""
    served = serve(server)
    before = sorted(served.pids())

    def kill() -> None:
        os.kill(served.daemon.tree.supervisor_pid(), signal.SIGKILL)
        _next_supervisor(served, 2)

    loaded(served, kill)
    assert sorted(served.all_managed(4)) == before


@pytest.mark.parametrize("server", ALL_SERVERS)
def test_upgrade_of_the_supervisor(serve, server: str):
    """``chapiteauctl upgrade``: new supervisor code, not one worker restarted."""
    served = serve(server)
    before = sorted(served.pids())
    supervisor = served.daemon.tree.supervisor_pid()

    def upgrade() -> None:
        subprocess.run(
            [CTL, "--endpoint", served.daemon.endpoint, "upgrade"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        _next_supervisor(served, 2)

    loaded(served, upgrade)
    assert sorted(served.all_managed(4)) == before
    assert not is_alive(supervisor)


def _broker_gone(tree: Chapiteau) -> None:
    kill_together(tree.pid, tree.supervisor_pid())


def _broker_leaves(tree: Chapiteau) -> None:
    supervisor = tree.supervisor_pid()
    tree.process.send_signal(signal.SIGTTIN)
    assert tree.process.wait(15) == 0
    wait_until(lambda: not is_alive(supervisor))


@pytest.mark.parametrize(
    "end",
    [_broker_gone, _broker_leaves],
    ids=["kill -9 of broker and supervisor", "broker upgrade (TTIN)"],
)
def test_a_new_chapiteau_after_the_broker_ended(serve, end: Callable[[Chapiteau], None]):
    """The old workers serve until a new chapiteau on the same config has recovered the
    socket and started its own; then they are retired, and nothing runs unmanaged."""
    served = serve("gunicorn")
    before = set(served.pids())
    first = served.daemon.tree
    second: list[Chapiteau] = []

    def restart() -> None:
        end(first)
        second.append(first.again())
        second[0].wait_for("orphans_retired", timeout=60)

    try:
        loaded(served, restart)
        assert not served.all_managed(4) & before
    finally:
        for tree in second:
            tree.shut_down()


def _environ_has(pid: int, pair: str) -> bool:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return pair.encode() in environ.read().split(b"\0")


def test_marked_finds_the_marked_processes_only():
    """The check every test above ends with would pass vacuously if it found nothing."""
    assert marked(uuid.uuid4().hex) == {}


def test_graceful_reload_by_the_next_supervisor(serve):
    """The doors of adopted workers are the next supervisor's to close: after a kill -9 of
    the supervisor, uvicorn's graceful reload loses nothing either."""
    served = serve("uvicorn")
    os.kill(served.daemon.tree.supervisor_pid(), signal.SIGKILL)
    _next_supervisor(served, 2)
    before = served.pids()
    loaded(served, lambda: served.call("reload", name="web", graceful=True, waiting=True))
    assert not served.all_managed(4) & set(before)


def _served_by(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.read().split()[2])


def test_a_stopping_worker_gets_no_new_connection(serve):
    """Its door closes before its stop signal: during its drain_delay, every new connection
    goes to its replacement, none to it (without steering, the kernel would give it its
    share of them, as it does on a plain so_reuseport socket)."""
    served = serve("uvicorn", numprocesses=1, extra="drain_delay = 6")
    (old,) = served.pids()
    reload = threading.Thread(
        target=served.call, args=("reload",), kwargs={"name": "web", "graceful": True}
    )
    reload.start()
    try:
        wait_until(lambda: _served_by(served.url) != old, timeout=30)
        answers = [_served_by(served.url) for _ in range(40)]
        assert is_alive(old), "the old worker is gone: its drain_delay was not tested"
        assert old not in answers, answers
    finally:
        reload.join(60)
    wait_until(lambda: not is_alive(old), timeout=30)
