"""chapiteauctl: the messages it sends, how it prints replies, its exit statuses.

The daemon side is a tiny in-test ZMQ ROUTER that records each request and
answers a canned reply, since the client is what is tested here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from chapiteau.ctl import cli as ctl
from chapiteau.ctl.client import Client

Reply = dict[str, Any] | Callable[[dict[str, Any]], list[dict[str, Any]] | None]


class FakeDaemon:
    """A ROUTER answering every request with ``reply`` (a dict, or a function of the request)."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.requests: list[dict[str, Any]] = []
        self.reply: Reply = {"status": "ok"}
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while self._running:
            if not poller.poll(20):
                continue
            identity, body = self.socket.recv_multipart()
            request = json.loads(body)
            self.requests.append(request)
            if callable(self.reply):
                replies = self.reply(request)
            else:
                replies = [{**self.reply, "id": request["id"]}]
            for reply in replies or []:
                self.socket.send_multipart([identity, json.dumps(reply).encode()])

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.socket.close()
        self.context.term()


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    fake = FakeDaemon()
    yield fake
    fake.close()


def run(daemon: FakeDaemon, *argv: str) -> int:
    return ctl.main(["--endpoint", daemon.endpoint, "--timeout", "2", *argv])


# -- messages sent ---------------------------------------------------------------------------

MESSAGES = [
    (["add", "web", "python", "-m", "http.server"], "add",
     {"name": "web", "cmd": "python -m http.server", "start": False}),
    (["add", "--start", "web", "sleep"], "add", {"name": "web", "cmd": "sleep", "start": True}),
    (["incr", "web"], "incr", {"name": "web", "waiting": False}),
    (["incr", "web", "3", "--waiting"], "incr", {"name": "web", "nb": 3, "waiting": True}),
    (["decr", "web", "2"], "decr", {"name": "web", "nb": 2, "waiting": False}),
    (["dstats"], "dstats", {}),
    (["get", "web", "numprocesses", "env"], "get",
     {"name": "web", "keys": ["numprocesses", "env"]}),
    (["globaloptions"], "globaloptions", {}),
    (["globaloptions", "endpoint"], "globaloptions", {"option": "endpoint"}),
    (["kill", "web"], "kill", {"name": "web", "waiting": False}),
    (["kill", "web", "123", "--signum", "INT", "--graceful_timeout", "2.5", "--waiting"], "kill",
     {"name": "web", "pid": 123, "signum": "INT", "graceful_timeout": 2.5, "waiting": True}),
    (["kill", "web", "--signum", "9"], "kill", {"name": "web", "signum": 9, "waiting": False}),
    (["list"], "list", {}),
    (["list", "web"], "list", {"name": "web"}),
    (["listsockets"], "listsockets", {}),
    (["numprocesses"], "numprocesses", {}),
    (["numprocesses", "web"], "numprocesses", {"name": "web"}),
    (["numwatchers"], "numwatchers", {}),
    (["options", "web"], "options", {"name": "web"}),
    (["quit"], "quit", {"waiting": False}),
    (["quit", "--waiting"], "quit", {"waiting": True}),
    (["reload"], "reload", {"graceful": True, "waiting": False, "sequential": False}),
    (["reload", "web", "--waiting", "--sequential", "--terminate"], "reload",
     {"name": "web", "graceful": False, "waiting": True, "sequential": True}),
    (["reloadconfig", "--waiting"], "reloadconfig", {"waiting": True}),
    (["restart"], "restart", {"waiting": False, "match": "glob"}),
    (["restart", "web", "--match", "regex"], "restart",
     {"name": "web", "waiting": False, "match": "regex"}),
    (["rm", "web"], "rm", {"name": "web", "nostop": False, "waiting": False}),
    (["rm", "web", "--nostop", "--waiting"], "rm",
     {"name": "web", "nostop": True, "waiting": True}),
    (["set", "web", "numprocesses", "3"], "set", {"name": "web", "options": {"numprocesses": 3}}),
    (["set", "web", "env", "A=1,B=x=y", "--waiting"], "set",
     {"name": "web", "options": {"env": {"A": "1", "B": "x=y"}}, "waiting": True}),
    (["set", "web", "env", '{"A": "1,2"}'], "set",
     {"name": "web", "options": {"env": {"A": "1,2"}}}),
    (["set", "web", "stop_signal", "INT", "graceful_timeout", "3", "send_hup", "yes"], "set",
     {"name": "web", "options": {"stop_signal": 2, "graceful_timeout": 3.0, "send_hup": True}}),
    (["set", "web", "hooks", "before_start:mod.fn,after_stop:mod.g"], "set",
     {"name": "web", "options": {"hooks": {"before_start": "mod.fn", "after_stop": "mod.g"}}}),
    (["set", "web", "rlimit_nofile", "1024", "stdout_stream.max_bytes", "10"], "set",
     {"name": "web", "options": {"rlimit_nofile": 1024, "stdout_stream.max_bytes": 10}}),
    (["signal", "web", "HUP"], "signal",
     {"name": "web", "children": False, "recursive": False, "signum": "HUP"}),
    (["signal", "web", "42", "--children", "15"], "signal",
     {"name": "web", "children": True, "recursive": False, "signum": "15", "pid": 42}),
    (["start"], "start", {"waiting": False, "match": "glob"}),
    (["start", "web", "--waiting", "--match", "simple"], "start",
     {"name": "web", "waiting": True, "match": "simple"}),
    (["stats"], "stats", {"extended": False}),
    (["stats", "--extended", "web", "42"], "stats",
     {"name": "web", "process": 42, "extended": True}),
    (["status"], "status", {}),
    (["status", "web"], "status", {"name": "web"}),
    (["stop", "web", "--waiting"], "stop", {"name": "web", "waiting": True, "match": "glob"}),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "command", "properties"), MESSAGES, ids=lambda v: str(v))
def test_command_sends_circus_message(
    daemon: FakeDaemon, argv: list[str], command: str, properties: dict[str, Any]
) -> None:
    run(daemon, *argv)
    assert daemon.last["command"] == command
    assert daemon.last["properties"] == properties


def test_request_carries_an_id_that_the_reply_must_echo(daemon: FakeDaemon, capsys) -> None:
    def stale_then_right(request: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"status": "ok", "watchers": ["stale"], "id": "someone-else"},
            {"status": "ok", "watchers": ["web"], "id": request["id"]},
        ]

    daemon.reply = stale_then_right
    assert run(daemon, "list") == 0
    assert capsys.readouterr().out == "web\n"


# -- output of each command ------------------------------------------------------------------

INFO = {
    "pid": 42,
    "cmdline": "python",
    "username": "nobody",
    "nice": 0,
    "mem_info1": "1.38M",
    "mem_info2": "10.00M",
    "cpu": 0.5,
    "mem": 0.1,
    "ctime": "0:01.20",
    "children": [],
}
CHILD = {**INFO, "pid": 43, "cmdline": "sh"}
LINE = "42  python nobody 0 1.38M 10.00M 0.5 0.1 0:01.20"
CHILD_LINE = "43  sh nobody 0 1.38M 10.00M 0.5 0.1 0:01.20"

OUTPUTS = [
    (["list"], {"status": "ok", "watchers": ["a", "web"]}, "a,web"),
    (["list", "web"], {"status": "ok", "pids": [3, 1, 2]}, "3,1,2"),
    (["status"], {"status": "ok", "statuses": {"web": "active", "a": "stopped"}},
     "a: stopped\nweb: active"),
    (["status", "web"], {"status": "active"}, "active"),
    (["incr", "web"], {"status": "ok", "numprocesses": 4}, "4"),
    (["decr", "web"], {"status": "ok", "numprocesses": 1, "singleton": True},
     "This watcher is a Singleton - not changing the number of processes"),
    (["numwatchers"], {"status": "ok", "numwatchers": 2}, "2"),
    (["numprocesses", "web"], {"status": "ok", "numprocesses": 3, "watcher_name": "web"}, "3"),
    (["listsockets"], {"status": "ok", "sockets": [
        {"fd": 5, "name": "web", "backlog": 2048, "host": "127.0.0.1", "port": 8080},
        {"fd": 6, "name": "unix", "backlog": 2048, "path": "/run/x.sock"}]},
     "5:socket 'web' at 127.0.0.1:8080\n6:socket 'unix' at /run/x.sock"),
    (["options", "web"], {"status": "ok", "options": {
        "cmd": "sleep", "env": {"B": "2", "A": "1"}, "uid": None, "numprocesses": 2}},
     "cmd: sleep\nenv: A=1,B=2\nuid: \nnumprocesses: 2"),
    (["get", "web", "env"], {"status": "ok", "options": {"env": {}}}, "env: "),
    (["globaloptions"], {"status": "ok", "options": {"check_delay": 5.0}}, "check_delay: 5.0"),
    (["quit"], {"status": "ok"}, "ok"),
    (["stats", "web"],
     {"status": "ok", "name": "web", "info": {"42": {**INFO, "children": [CHILD]}}},
     f"web:\n42: {LINE}\n   {CHILD_LINE}"),
    (["stats"], {"status": "ok", "infos": {"web": {"42": INFO}, "idle": {}}},
     f"web:\n42: {LINE}\nidle:"),
    (["stats", "web", "42"], {"status": "ok", "process": 42, "info": INFO}, f"42: {LINE}\n"),
    (["stats", "web"],
     {"status": "ok", "name": "web", "info": {"42": "No such process (stopped?)"}},
     "web:\n42: No such process (stopped?)"),
    (["dstats"], {"status": "ok", "info": {**INFO, "children": [CHILD]}},
     f"Main Process:\n    {LINE}\nChildren:\n    {CHILD_LINE}"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "reply", "output"), OUTPUTS, ids=lambda v: str(v)[:40])
def test_reply_is_printed_as_circusctl_prints_it(
    daemon: FakeDaemon, capsys, argv: list[str], reply: dict[str, Any], output: str
) -> None:
    daemon.reply = reply
    assert run(daemon, *argv) == 0
    assert capsys.readouterr().out == output + "\n"


def test_error_reply_prints_reason_on_stderr_and_exits_3(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "error", "reason": "program nosuch not found", "errno": 3}
    assert run(daemon, "stop", "nosuch") == 3
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "error: program nosuch not found\n")


def test_status_error_names_the_reason(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "error", "reason": "program nosuch not found", "errno": 3}
    assert run(daemon, "status", "nosuch") == 3
    assert capsys.readouterr().err == "error: program nosuch not found\n"


VERBOSE_STATES = {
    "web": {
        "state": "active",
        "processes": [
            {
                "wid": 1,
                "pid": 4242,
                "state": "running",
                "uptime": 3725.5,
                "restarts": 2,
                "last_exit": {"code": -9, "reason": "exited"},
                "started": 1.0,
                "ready": True,
                "status": "up\x1bz",
            }
        ],
    },
    "crash": {
        "state": "backing_off",
        "retry_in": 12.8,
        "retry_at": 1800000000.0,
        "failed_rounds": 8,
        "spawn_failures": 0,
        "processes": [
            {
                "wid": 1,
                "pid": None,
                "state": "backing_off",
                "uptime": None,
                "restarts": 7,
                "last_exit": {"code": 3, "reason": "exited too quickly"},
                "started": None,
                "ready": None,
            }
        ],
    },
}


def test_status_verbose_prints_phases_and_processes_and_exits_3_unless_all_active(
    daemon: FakeDaemon, capsys
) -> None:
    daemon.reply = {"status": "ok", "statuses": {"web": "active", "crash": "active"}}
    daemon.reply["states"] = VERBOSE_STATES
    assert run(daemon, "status", "-v") == 3
    assert daemon.last["properties"] == {"verbose": True}
    assert capsys.readouterr().out.splitlines() == [
        "crash: backing off (next attempt 2027-01-15T08:00:00Z, in 12.8 s; 8 failed rounds)",
        "  WID  PID  STATE        UPTIME  RESTARTS  LAST EXIT                    READY  STATUS",
        "  1    -    backing off  -       7         exit 3 (exited too quickly)  -",
        "web: active",
        "  WID  PID   STATE    UPTIME   RESTARTS  LAST EXIT                    READY  STATUS",
        "  1    4242  running  1:02:05  2         killed by signal 9 (exited)  yes    up z",
    ]
    daemon.reply = {"status": "active", "name": "web", "state": VERBOSE_STATES["web"]}
    assert run(daemon, "status", "--verbose", "web") == 0
    assert daemon.last["properties"] == {"name": "web", "verbose": True}
    assert capsys.readouterr().out.startswith("web: active\n")


def test_globaloptions_error_prints_the_bare_reason(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "error", "reason": "'x' not an existing option", "errno": 3}
    assert run(daemon, "globaloptions", "x") == 3
    assert capsys.readouterr().err == "'x' not an existing option\n"


def test_json_prints_the_raw_reply(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "ok", "watchers": ["web"]}
    assert run(daemon, "--json", "list") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["watchers"] == ["web"] and printed["id"] == daemon.last["id"]


def test_json_prettify_indents_and_sorts_keys(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "ok", "watchers": ["web"]}
    run(daemon, "--json", "--prettify", "list")
    out = capsys.readouterr().out
    assert out == json.dumps(json.loads(out), indent=2, sort_keys=True) + "\n"


def test_json_error_reply_exits_3(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "error", "reason": "nope", "errno": 3}
    assert run(daemon, "--json", "list", "x") == 3
    assert json.loads(capsys.readouterr().out)["reason"] == "nope"


# -- exit statuses and usage -----------------------------------------------------------------


def test_no_reply_within_the_timeout_exits_1(daemon: FakeDaemon, capsys) -> None:
    """A reply that comes 1 s late, after --timeout 0.3 (the default would wait for it)."""

    def late(request: dict[str, Any]) -> list[dict[str, Any]]:
        time.sleep(1)
        return [{"status": "ok", "id": request["id"]}]

    daemon.reply = late
    assert ctl.main(["--endpoint", daemon.endpoint, "--timeout", "0.3", "list"]) == 1
    assert capsys.readouterr().err.startswith("Timed out.\n")


class IpcDaemon:
    """A ROUTER on ``endpoint`` answering one ``list`` with its own name; restartable."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.bind(endpoint)
        self.name = name
        self._thread = threading.Thread(target=self._answer_one, daemon=True)
        self._thread.start()

    def _answer_one(self) -> None:
        if self.socket.poll(10_000):
            identity, body = self.socket.recv_multipart()
            request = json.loads(body)
            reply = {"status": "ok", "watchers": [self.name], "id": request["id"]}
            self.socket.send_multipart([identity, json.dumps(reply).encode()])

    def close(self) -> None:
        self._thread.join()
        self.socket.close()
        self.context.term()


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_an_ipc_endpoint_is_reached_by_path_or_abstract_name(tmp_path, where, capsys) -> None:
    endpoint = f"ipc://{tmp_path}/ctl.sock" if where == "path" else f"ipc://@{tmp_path}/ctl"
    daemon = IpcDaemon(endpoint, "web")
    try:
        assert ctl.main(["--endpoint", endpoint, "list"]) == 0
    finally:
        daemon.close()
    assert capsys.readouterr().out == "web\n"


def test_a_restarted_daemon_is_reached_on_a_new_connection(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/ctl.sock"
    client = Client(endpoint, timeout=5)
    first = IpcDaemon(endpoint, "first")
    assert client.call("list", {})["watchers"] == ["first"]
    first.close()
    second = IpcDaemon(endpoint, "second")
    try:
        assert client.call("list", {})["watchers"] == ["second"]
    finally:
        client.close()
        second.close()


def test_a_daemon_that_is_not_running_is_reported_at_once(tmp_path, capsys) -> None:
    endpoint = f"ipc://{tmp_path}/ctl.sock"
    assert ctl.main(["--endpoint", endpoint, "--timeout", "60", "list"]) == 1
    assert capsys.readouterr().err == (f"cannot connect to {endpoint}: No such file or directory\n")


def test_wrong_argument_count_exits_1_without_sending(daemon: FakeDaemon, capsys) -> None:
    assert run(daemon, "list", "a", "b") == 1
    assert capsys.readouterr().err == "Invalid number of arguments\n"
    assert daemon.requests == []


def test_set_unknown_key_is_refused_client_side(daemon: FakeDaemon, capsys) -> None:
    assert run(daemon, "set", "web", "bogus", "1") == 1
    assert capsys.readouterr().err == "unknown key 'bogus'\n"
    assert daemon.requests == []


def test_set_types_priority_autostart_and_use_sockets_as_the_daemon_does(
    daemon: FakeDaemon,
) -> None:
    assert run(daemon, "set", "web", "priority", "5", "autostart", "no", "use_sockets", "on") == 0
    assert daemon.last["properties"]["options"] == {
        "priority": 5,
        "autostart": False,
        "use_sockets": True,
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [("numprocesses", "many"), ("send_hup", "maybe"), ("stop_signal", "SIGNOPE"),
     ("env", "NOEQUALS"), ("hooks", "nohook:x.y"), ("hooks.nohook", "x.y")],
)  # fmt: skip
def test_set_bad_value_is_refused_client_side(
    daemon: FakeDaemon, capsys, key: str, value: str
) -> None:
    assert run(daemon, "set", "web", key, value) == 1
    assert daemon.requests == []


@pytest.mark.parametrize(
    "argv",
    [["nosuchcommand"], ["list", "--json"], ["stop", "--bogus"], ["--timeout", "x", "list"]],
)
def test_usage_error_exits_2(daemon: FakeDaemon, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ctl.main(["--endpoint", daemon.endpoint, *argv])
    assert exited.value.code == 2


def test_version_prints_program_and_version(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        ctl.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"chapiteauctl {ctl.VERSION}\n"


def test_help_lists_every_command(capsys) -> None:
    assert ctl.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ctl.CTL_COMMANDS)


def test_help_with_a_command_prints_its_usage_without_sending(daemon: FakeDaemon, capsys) -> None:
    assert run(daemon, "--help", "incr") == 0
    assert "incr NAME [NB] [--waiting]" in capsys.readouterr().out
    assert daemon.requests == []


def test_endpoint_defaults_to_circusctl_variable(daemon: FakeDaemon, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CIRCUSCTL_ENDPOINT", daemon.endpoint)
    daemon.reply = {"status": "ok", "watchers": ["web"]}
    assert ctl.main(["list"]) == 0
    assert capsys.readouterr().out == "web\n"


def test_upgrade_waits_for_the_new_supervisor_and_prints_its_pid(
    daemon: FakeDaemon, capsys
) -> None:
    pids = iter([100, 100, 200])

    def reply(request: dict[str, Any]) -> list[dict[str, Any]]:
        if request["command"] == "upgrade":
            return [{"status": "ok", "pid": 100, "id": request["id"]}]
        return [{"status": "ok", "info": {"pid": next(pids)}, "id": request["id"]}]

    daemon.reply = reply
    assert run(daemon, "upgrade") == 0
    assert capsys.readouterr().out == "upgraded: supervisor 200 (was 100)\n"
    assert [r["command"] for r in daemon.requests] == ["upgrade", "dstats", "dstats", "dstats"]


def test_an_upgrade_whose_check_fails_is_an_error_reply(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "error", "reason": "upgrade: the new supervisor would not start: x"}
    assert run(daemon, "upgrade") == 3
    assert capsys.readouterr().err == "error: upgrade: the new supervisor would not start: x\n"
    assert len(daemon.requests) == 1


def test_every_circusctl_command_exists() -> None:
    circusctl = {"add", "decr", "dstats", "get", "globaloptions", "incr", "kill", "list", "listen",
                 "listsockets", "numprocesses", "numwatchers", "options", "quit", "reload",
                 "reloadconfig", "restart", "rm", "set", "signal", "start", "stats", "status",
                 "stop"}  # fmt: skip
    chapiteauctl_only = {"completion", "help", "tail", "upgrade"}
    assert set(ctl.CTL_COMMANDS) == circusctl | chapiteauctl_only


# -- the installed script: interactive shell, listen, CURVE ----------------------------------

SCRIPT = [sys.executable, "-c", "import sys; from chapiteau.ctl.cli import main; "
          "sys.exit(main())"]  # fmt: skip


def test_no_command_opens_a_shell_that_runs_commands(daemon: FakeDaemon) -> None:
    daemon.reply = lambda request: [
        {"status": "ok", "statuses": {"web": "active"}, "watchers": ["web"], "id": request["id"]}
    ]
    result = subprocess.run(
        [*SCRIPT, "--endpoint", daemon.endpoint, "--timeout", "2"],
        input="list\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"chapiteauctl {ctl.VERSION}",
        "web: active",
        "(chapiteauctl) web",
        "(chapiteauctl) ",
    ]


def test_listen_prints_topic_and_message_of_each_event() -> None:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    listener = subprocess.Popen(
        [*SCRIPT, "--endpoint", f"tcp://127.0.0.1:{port}", "listen", "watcher.web."],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 15
        os.set_blocking(listener.stdout.fileno(), False)
        while not line and time.monotonic() < deadline:
            pub.send_multipart([b"watcher.other.spawn", b"{}"])
            pub.send_multipart([b"watcher.web.spawn", b'{"process_pid": 7}'])
            time.sleep(0.1)
            line = listener.stdout.readline()
        assert line == 'watcher.web.spawn: {"process_pid": 7}\n'
    finally:
        listener.kill()
        listener.wait()
        pub.close()
        context.term()


def test_curve_client_talks_to_a_curve_server() -> None:
    server_public, server_secret = zmq.curve_keypair()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_server = True
    router.curve_secretkey = server_secret
    router.curve_publickey = server_public
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def answer() -> None:
        identity, body = router.recv_multipart()
        reply = {"status": "ok", "watchers": ["secure"], "id": json.loads(body)["id"]}
        router.send_multipart([identity, json.dumps(reply).encode()])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    env = {**os.environ, "CHAPITEAUCTL_CURVE_SERVERKEY": server_public.decode()}
    result = subprocess.run(
        [*SCRIPT, "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "5", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    thread.join(5)
    router.close()
    context.term()
    assert (result.returncode, result.stdout) == (0, "secure\n")


def test_a_curve_daemon_asked_without_its_key_says_to_give_it() -> None:
    _, server_secret = zmq.curve_keypair()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_server = True
    router.curve_secretkey = server_secret
    port = router.bind_to_random_port("tcp://127.0.0.1")
    result = subprocess.run(
        [*SCRIPT, "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "0.5", "list"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    router.close()
    context.term()
    assert (result.returncode, result.stderr) == (
        1,
        f"tcp://127.0.0.1:{port} closed the connection in the handshake: if it uses CURVE, "
        "give its key with --curve-server-key\n",
    )


# -- help, completion, tail ------------------------------------------------------------------

CTL_PROGRAM = os.path.join(os.path.dirname(sys.executable), "chapiteauctl")


def complete(daemon: FakeDaemon, *words: str, shell: str = "bash") -> list[str]:
    """The completions of ``chapiteauctl WORDS`` (the last is partial) by the script for
    ``shell``. zsh's compgen leaves the matching to zsh's completer, which keeps the
    candidates that start with the word: done here."""
    line = " ".join((CTL_PROGRAM, *words))
    script = (
        f'eval "$({CTL_PROGRAM} completion {shell})"\n'
        f"COMP_LINE={shlex.quote(line)}; COMP_POINT={len(line)}\n"
        '_chapiteauctl; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "CIRCUSCTL_ENDPOINT": daemon.endpoint}
    command = ["bash", "--norc"] if shell == "bash" else ["zsh", "-f"]
    done = subprocess.run(
        [*command, "-c", script], capture_output=True, text=True, env=env, timeout=30
    )
    assert (done.returncode, done.stderr) == (0, "")
    return [word for word in done.stdout.split() if word.startswith(words[-1])]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_completes_commands_flags_and_live_watcher_names(
    daemon: FakeDaemon, shell: str
) -> None:
    def words(*typed: str) -> list[str]:
        return sorted(complete(daemon, *typed, shell=shell))

    daemon.reply = {"status": "ok", "watchers": ["web", "worker", "cron"]}
    assert words("sta") == ["start", "stats", "status"]
    assert words("--end") == ["--endpoint"]
    assert words("--") == sorted(ctl.global_options())
    assert words("--timeout", "3", "--json", "sto") == ["stop"]
    assert words("status", "-") == ["--help", "--verbose", "-v"]
    assert words("stop", "w") == ["web", "worker"]
    assert daemon.last["command"] == "list"
    assert words("--endpoint", daemon.endpoint, "tail", "-f", "c") == ["cron"]
    assert words("help", "in") == ["incr"]
    assert words("completion", "") == ["bash", "zsh"]
    assert words("stop", "web", "") == []


def test_completion_scripts_for_each_shell(capsys) -> None:
    assert ctl.main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert "bashcompinit" in zsh and "complete -F _chapiteauctl chapiteauctl" in zsh
    assert ctl.main(["completion", "fish"]) == 1
    assert capsys.readouterr().err == "completion takes one shell: bash or zsh\n"


def test_help_command_lists_commands_or_shows_one(capsys) -> None:
    assert ctl.main(["help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ctl.CTL_COMMANDS)
    assert ctl.main(["help", "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: chapiteauctl status [-v] [NAME]") and "--verbose, -v" in out
    assert ctl.main(["help", "nosuch"]) == 1


def test_tail_prints_the_last_lines_of_the_stream_file(daemon: FakeDaemon, tmp_path, capfd) -> None:
    log = tmp_path / "web.log"
    log.write_text("".join(f"line {n}\n" for n in range(20)))
    options = {"stdout_stream_conf": {"class": "FileStream", "filename": str(log)}}
    daemon.reply = {"status": "ok", "options": options}
    assert run(daemon, "tail", "-n", "3", "web") == 0
    assert capfd.readouterr().out == "line 17\nline 18\nline 19\n"
    assert daemon.last["properties"] == {"name": "web", "keys": ["stdout_stream_conf"]}


def test_tail_without_a_stream_file_says_how_to_get_one(daemon: FakeDaemon, capsys) -> None:
    daemon.reply = {"status": "ok", "options": {"stderr_stream_conf": {}}}
    assert run(daemon, "tail", "--stream", "stderr", "web") == 1
    assert capsys.readouterr().err == (
        "error: watcher 'web' has no stderr_stream file: set stderr_stream.class = "
        "FileStream and stderr_stream.filename in [watcher:web] to tail it\n"
    )
