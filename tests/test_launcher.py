"""Tests for broker/launcher.py: the strict request format and the launcher process itself."""

from __future__ import annotations

import json
import os
import pwd
import socket

import prctl
import pytest

from chapiteau.broker.launcher import (
    LaunchError,
    Request,
    decode_request,
    encode_request,
    fork_launcher,
)
from chapiteau.broker.privileges import ServiceUser
from tests.forked import in_child, status_fields

NOBODY = pwd.getpwnam("nobody")
SERVICE = ServiceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, (NOBODY.pw_gid,))


def test_a_request_survives_encoding():
    request = Request(("/bin/sh", "-c", "true"), {"PATH": "/bin"}, (1, 7))
    assert decode_request(encode_request(request), 2) == request


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        b'{"argv": ["x"], "env": {}}',
        b'{"argv": ["x"], "env": {}, "fds": [], "user": 0}',
        b'{"argv": [], "env": {}, "fds": []}',
        b'{"argv": "x", "env": {}, "fds": []}',
        b'{"argv": ["x\\u0000"], "env": {}, "fds": []}',
        b'{"argv": ["x"], "env": {"A": 1}, "fds": []}',
        b'{"argv": ["x"], "env": {"A=B": "c"}, "fds": []}',
        b'{"argv": ["x"], "env": {}, "fds": [3]}',
        b'{"argv": ["x"], "env": {}, "fds": [0]}',
        b'{"argv": ["x"], "env": {}, "fds": [true]}',
        b"\\xff",
    ],
)
def test_a_malformed_request_is_refused(document):
    with pytest.raises(ValueError):
        decode_request(document, 0)


def test_duplicate_fd_numbers_are_refused():
    with pytest.raises(ValueError):
        decode_request(b'{"argv": ["x"], "env": {}, "fds": [3, 3]}', 2)


def run_launcher(scenario, user: ServiceUser = SERVICE) -> dict:
    """Run ``scenario(launcher)`` in a child that, like the broker, is a child subreaper."""

    def child() -> str:
        prctl.set_child_subreaper(1)
        launcher = fork_launcher(user)
        return json.dumps(scenario(launcher))

    code, output = in_child(child)
    assert code == 0, output
    return json.loads(output)


SHOW = "id -u; id -g; readlink /proc/self/fd/5; echo $PATH"


def start_and_read(launcher) -> dict:
    reader, writer = os.pipe()
    probe, _ = socket.socketpair()
    pid = launcher.start(
        ["/bin/sh", "-c", SHOW], {"PATH": "/usr/bin:/bin"}, {1: writer, 5: probe.fileno()}
    )
    os.close(writer)
    with os.fdopen(reader) as output:
        lines = output.read().split()
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as children:
        adopted = pid in [int(word) for word in children.read().split()]
    _, status = os.waitpid(pid, 0)
    launcher_status = status_fields(launcher.pid)
    return {
        "lines": lines,
        "probe": f"socket:[{os.fstat(probe.fileno()).st_ino}]",
        "adopted": adopted,
        "exit": os.waitstatus_to_exitcode(status),
        "launcher": {
            key: launcher_status[key] for key in ("Uid", "CapEff", "CapBnd", "NoNewPrivs")
        },
    }


def test_the_supervisor_runs_as_the_service_user_with_its_fds_and_is_our_child():
    result = run_launcher(start_and_read)
    uid, gid, fd5, path = result["lines"]
    assert (int(uid), int(gid)) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert fd5 == result["probe"]
    assert path == "/usr/bin:/bin"
    assert result["adopted"] and result["exit"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher keeps capabilities only as root")
def test_the_launcher_keeps_only_setuid_and_setgid_and_an_empty_bounding_set():
    launcher = run_launcher(start_and_read)["launcher"]
    assert launcher["Uid"].split()[0] == "0"
    assert int(launcher["CapEff"], 16) == (1 << prctl.CAP_SETUID) | (1 << prctl.CAP_SETGID)
    assert int(launcher["CapBnd"], 16) == 0
    assert launcher["NoNewPrivs"] == "1"


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher keeps capabilities only as root")
def test_a_root_supervisor_gets_roots_privileges_as_configured():
    root = ServiceUser("root", 0, 0, (0,))

    def scenario(launcher) -> dict:
        reader, writer = os.pipe()
        pid = launcher.start(
            ["/bin/grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)", "/proc/self/status"], {}, {1: writer}
        )
        os.close(writer)
        with os.fdopen(reader) as output:
            fields = dict(line.split(":\t") for line in output.read().splitlines())
        os.waitpid(pid, 0)
        return fields

    fields = run_launcher(scenario, root)
    assert fields["CapEff"] == fields["CapBnd"] == status_fields()["CapBnd"]
    assert fields["NoNewPrivs"] == "0"


def test_stdout_and_stderr_may_be_one_pipe():
    def scenario(launcher) -> dict:
        reader, writer = os.pipe()
        pid = launcher.start(
            ["/bin/sh", "-c", "echo out; echo err >&2"], {}, {1: writer, 2: writer}
        )
        os.close(writer)
        with os.fdopen(reader) as output:
            text = output.read()
        os.waitpid(pid, 0)
        return {"text": text}

    assert run_launcher(scenario) == {"text": "out\nerr\n"}


def test_an_fd_may_be_placed_at_any_number_the_launcher_itself_uses():
    def scenario(launcher) -> dict:
        probe, _ = socket.socketpair()
        seen = {}
        # The launcher's own fds (its socket, its pipe to the intermediate child) are among these.
        for number in range(3, 16):
            reader, writer = os.pipe()
            script = f"readlink /proc/self/fd/{number}"
            pid = launcher.start(["/bin/sh", "-c", script], {}, {1: writer, number: probe.fileno()})
            os.close(writer)
            with os.fdopen(reader) as output:
                seen[number] = output.read().strip()
            os.waitpid(pid, 0)
        return {
            "seen": sorted(set(seen.values())),
            "sent": f"socket:[{os.fstat(probe.fileno()).st_ino}]",
        }

    result = run_launcher(scenario)
    assert result["seen"] == [result["sent"]]


def test_a_supervisor_that_exits_at_once_is_still_ours_to_reap():
    def scenario(launcher) -> dict:
        statuses = []
        for _ in range(200):
            pid = launcher.start(["/bin/true"], {}, {})
            statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        return {"statuses": sorted(set(statuses))}

    assert run_launcher(scenario) == {"statuses": [0]}


def test_a_program_that_cannot_start_is_an_error_and_the_launcher_goes_on():
    def scenario(launcher) -> dict:
        try:
            launcher.start(["/nonexistent/program"], {}, {})
        except LaunchError as exc:
            error = str(exc)
        pid = launcher.start(["/bin/true"], {}, {})
        return {"error": error, "status": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}

    result = run_launcher(scenario)
    assert "cannot start the supervisor /nonexistent/program" in result["error"]
    assert result["status"] == 0


def test_a_junk_frame_gets_an_error_reply_and_its_fds_are_closed():
    def scenario(launcher) -> dict:
        reader, writer = os.pipe()
        launcher.sock.sendmsg(
            [b"junk"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, writer.to_bytes(4, "little"))]
        )
        reply = json.loads(launcher.sock.recv(4096))
        os.close(writer)
        os.set_blocking(reader, False)
        # EOF: the launcher's copy of the write end was closed too.
        return {"reply": reply, "eof": os.read(reader, 1) == b""}

    result = run_launcher(scenario)
    assert "error" in result["reply"]
    assert result["eof"]


def test_the_launcher_exits_when_the_broker_closes_its_end():
    def scenario(launcher) -> dict:
        launcher.close()
        _, status = os.waitpid(launcher.pid, 0)
        return {"status": os.waitstatus_to_exitcode(status)}

    assert run_launcher(scenario) == {"status": 0}
