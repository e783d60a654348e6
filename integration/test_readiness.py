"""Workers tell their readiness (sd_notify on NOTIFY_SOCKET); reloads wait for it.

The workers here are a small Python program speaking the protocol as
sd_notify(3) does (a datagram to NOTIFY_SOCKET, "@" meaning an abstract name),
and real gunicorn, which sends READY=1 itself when NOTIFY_SOCKET is set. What
the supervisor decided is read from its log (one ordered stream), from its
pubsub events and from ``chapiteauctl status -v``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from integration.harness import environ, free_port, http_get, is_alive, wait_until

CTL = Path(sys.executable).parent / "chapiteauctl"

NOTIFY_WORKER = """\
import os, signal, socket, sys, time

def send(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            pass  # nobody listens (between two supervisors): sd_notify ignores it too

signal.signal(signal.SIGUSR1, lambda *_: send(f"STATUS=told by {os.getpid()}"))

# argv: milliseconds before READY=1 ("never"; "file": what the file "mode" says),
# then how many keep-alives to send ("always" by default); SIGUSR1: one STATUS=
delay, keep_alives = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "always"
if delay == "file":
    with open("mode") as mode:
        delay = mode.read().strip()
if delay != "never":
    time.sleep(int(delay) / 1000)
    send(f"READY=1\\nSTATUS=serving as {os.getpid()}")
interval = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6 / 4
sent = 0
while interval and (keep_alives == "always" or sent < int(keep_alives)):
    send("WATCHDOG=1")
    sent += 1
    time.sleep(interval)
time.sleep(1000)
"""


def watcher(cmd: str, numprocesses: int = 1, **options: Any) -> str:
    lines = "".join(f"{key} = {value}\n" for key, value in options.items())
    return f"[watcher:w]\ncmd = {cmd}\nnumprocesses = {numprocesses}\n{lines}"


def notify_worker(workdir: Path, *args: str) -> str:
    (workdir / "notify_worker.py").write_text(NOTIFY_WORKER)
    (workdir / "notify_worker.py").chmod(0o644)
    return f"{sys.executable} notify_worker.py {' '.join(args)}"


def status_verbose(daemon: Any) -> str:
    result = subprocess.run(
        [str(CTL), "--endpoint", daemon.endpoint, "status", "-v", "w"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout


def ready_pids(tree: Any) -> list[int]:
    return [event["pid"] for event in tree.events_named("ready")]


def position(events: list[dict], name: str, pid: int) -> int:
    """The index of the first log event ``name`` about ``pid``."""
    return next(
        i
        for i, e in enumerate(events)
        if e["event"] == name and pid in (e.get("pid"), e.get("process_pid"))
    )


def test_reload_keeps_the_old_worker_until_the_new_one_says_ready(daemon, workdir: Path):
    app = daemon(
        watcher(notify_worker(workdir, "1500"), readiness="notify", graceful_timeout=5),
        circus="",
    )
    [old] = app.tree.wait_for("ready")
    assert app.call("reload", name="w", graceful=True, timeout=30)["status"] == "ok"
    new = app.tree.wait_for("ready", count=2)[-1]["pid"]
    app.tree.wait_for("process_reaped", where=lambda e: e["pid"] == old["pid"])
    events = app.tree.read_events()
    # The old worker was stopped only after its replacement said READY=1.
    assert position(events, "ready", new) < position(events, "process_reaped", old["pid"])
    assert position(events, "process_spawned", new) < position(events, "ready", new)
    assert app.call("list", name="w")["pids"] == [new]


@pytest.mark.parametrize("trigger", ["reloadconfig", "set", "max_age"])
def test_replacements_stop_the_old_worker_only_once_the_new_one_is_ready(
    daemon, workdir: Path, trigger: str
):
    cmd = notify_worker(workdir, "1500")
    options = {"readiness": "notify", "graceful_timeout": 5}
    if trigger == "max_age":
        options |= {"max_age": 3, "max_age_variance": 0}
    app = daemon(watcher(cmd, **options))
    [old] = app.tree.wait_for("ready")
    if trigger == "reloadconfig":
        app.rewrite_config(watcher(cmd, **options) + "\n[env:w]\nCHANGED = 1\n")
        assert app.call("reloadconfig", waiting=True, timeout=30)["status"] == "ok"
    elif trigger == "set":
        reply = app.call("set", name="w", options={"env": {"CHANGED": "1"}}, timeout=30)
        assert reply["status"] == "ok"
    new = app.tree.wait_for("ready", count=2, timeout=30)[-1]["pid"]
    app.tree.wait_for("process_reaped", where=lambda e: e["pid"] == old["pid"])
    events = app.tree.read_events()
    assert position(events, "ready", new) < position(events, "process_reaped", old["pid"])
    if trigger != "max_age":
        assert environ(new)["CHANGED"] == "1"


def test_a_worker_that_never_says_ready_is_stopped_after_ready_timeout(daemon, workdir: Path):
    (workdir / "mode").write_text("500")
    (workdir / "mode").chmod(0o644)
    cmd = notify_worker(workdir, "file")
    app = daemon(watcher(cmd, readiness="notify", ready_timeout=1, graceful_timeout=2))
    [old] = app.tree.wait_for("ready")
    (workdir / "mode").write_text("never")

    reply = app.call("reload", name="w", graceful=True, timeout=30)

    assert reply["status"] == "error"
    assert "not ready in time (ready_timeout = 1)" in reply["reason"]
    assert "1 running process(es) keep serving" in reply["reason"]
    [timed_out] = app.tree.wait_for("ready_timeout")
    assert timed_out["pid"] != old["pid"]
    assert is_alive(old["pid"])
    assert app.call("list", name="w")["pids"] == [old["pid"]]

    # Kept at the count, a replacement that never becomes ready is stopped and respawned.
    app.call("signal", name="w", pid=old["pid"], signum=9)
    app.tree.wait_for("ready_timeout", count=3)
    assert "not ready in time" in status_verbose(app)


def test_a_worker_that_stops_its_keep_alives_is_restarted(daemon, workdir: Path):
    app = daemon(watcher(notify_worker(workdir, "0", "3"), watchdog_sec=1, graceful_timeout=1))
    [first] = app.tree.worker_pids("w", 1)
    env = environ(first)
    assert env["NOTIFY_SOCKET"].startswith("@chapiteau-notify/")
    assert (env["WATCHDOG_USEC"], env["WATCHDOG_PID"]) == ("1000000", str(first))
    [timeout] = app.tree.wait_for("watchdog_timeout")
    assert timeout["pid"] == first
    app.tree.wait_for("process_reaped", where=lambda e: e["pid"] == first)
    app.tree.wait_for("process_spawned", count=2)
    wait_until(lambda: "watchdog timeout" in status_verbose(app))


def test_workers_of_a_plain_watcher_get_no_notify_socket(daemon):
    app = daemon(watcher("sleep 1000"))
    [pid] = app.tree.worker_pids("w", 1)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(environ(pid))


def test_status_text_and_readiness_show_in_status_verbose(daemon, workdir: Path):
    app = daemon(watcher(notify_worker(workdir, "0"), readiness="notify"))
    [ready] = app.tree.wait_for("ready")
    wait_until(lambda: f"serving as {ready['pid']}" in status_verbose(app))
    row = status_verbose(app).splitlines()[2].split()
    assert row[1] == str(ready["pid"]) and row[2] == "running"
    assert row[-4:] == ["yes", "serving", "as", str(ready["pid"])]
    [process] = app.call("status", name="w", verbose=True)["state"]["processes"]
    assert (process["ready"], process["status"]) == (True, f"serving as {ready['pid']}")


def test_rolling_reload_of_8_workers_keeps_8_ready(daemon, workdir: Path):
    app = daemon(watcher(notify_worker(workdir, "300"), 8, readiness="notify", max_replacing=2))
    old = {event["pid"] for event in app.tree.wait_for("ready", count=8)}
    events = app.events()
    try:
        assert app.call("reload", name="w", graceful=True, timeout=60)["status"] == "ok"
        seen = events.until("watcher.w.reap", timeout=30)
        while sum(topic == "watcher.w.reap" for topic, _ in seen) < 8:
            seen += events.until("watcher.w.reap", timeout=30)
    finally:
        events.close()
    ready, alive, fewest, most = set(old), set(old), 8, 8
    for topic, payload in seen:
        if topic == "chapiteau.w.ready":
            ready.add(payload["pid"])
        elif topic == "watcher.w.spawn":
            alive.add(payload["process_pid"])
        elif topic == "watcher.w.kill":
            ready.discard(payload["process_pid"])
        elif topic == "watcher.w.reap":
            alive.discard(payload["process_pid"])
        fewest, most = min(fewest, len(ready)), max(most, len(alive))
    assert fewest == 8
    assert most <= 8 + 2
    assert not ready & old and len(ready) == 8


def test_gunicorn_says_ready_and_a_reload_waits_for_it(chapiteau, workdir: Path):
    port, control = free_port(), free_port()
    tree = chapiteau(f"""
[broker]
user = nobody

[circus]
endpoint = tcp://127.0.0.1:{control}

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = {sys.executable} -m gunicorn --bind fd://$(circus.sockets.web) -w 1 hello_wsgi:application
working_dir = {workdir}
readiness = notify
ready_timeout = 30
graceful_timeout = 5
""")
    [ready] = tree.wait_for("ready", timeout=30)
    assert "hello from pid" in http_get(port)
    status = tree.wait_for("status", where=lambda e: e["pid"] == ready["pid"])[-1]
    assert "Gunicorn arbiter booted" in status["status"]
    ctl = [str(CTL), "--endpoint", f"tcp://127.0.0.1:{control}"]
    subprocess.run([*ctl, "reload", "web"], check=True, timeout=60, capture_output=True)
    new = tree.wait_for("ready", count=2, timeout=30)[-1]["pid"]
    tree.wait_for("process_reaped", where=lambda e: e["pid"] == ready["pid"])
    events = tree.read_events()
    assert position(events, "ready", new) < position(events, "process_reaped", ready["pid"])
    assert "hello from pid" in http_get(port)


pytestmark = pytest.mark.timeout(120)
