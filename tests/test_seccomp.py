"""Tests for broker/seccomp.py: the broker's allow-list filter, in a forked child."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import tempfile

import prctl
import pytest

from chapiteau.broker import seccomp
from tests.forked import in_child, status_fields


def confined(then):
    def child() -> str:
        prctl.set_no_new_privs(1)
        seccomp.install()
        return then()

    return child


def test_every_listed_call_exists_on_this_machine():
    names = (*seccomp.ALLOWED, *seccomp.KILLED)
    assert [name for name in names if seccomp.syscall_number(name) is None] == []


def test_no_call_is_both_allowed_and_killed():
    assert set(seccomp.ALLOWED) & set(seccomp.KILLED) == set()


def test_filter_shows_in_proc_as_mode_2():
    code, output = in_child(confined(lambda: json.dumps(status_fields())))
    fields = json.loads(output)
    assert code == 0
    assert (fields["Seccomp"], fields["Seccomp_filters"], fields["NoNewPrivs"]) == ("2", "1", "1")


@pytest.mark.parametrize(
    "call",
    [
        lambda: os.execv("/bin/true", ["true"]),
        lambda: os.setuid(0),
        lambda: os.fork(),
        lambda: os.chown("/", 0, 0),
    ],
    ids=["execve", "setuid", "fork", "chown"],
)
def test_a_forbidden_call_kills_the_process(call):
    code, _ = in_child(confined(call))
    assert code == -signal.SIGSYS


def test_a_call_outside_the_list_fails_with_eperm():
    def make_directory() -> str:
        try:
            os.mkdir(tempfile.mktemp())
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "created"

    assert in_child(confined(make_directory)) == (0, "EPERM")


def test_what_the_broker_does_still_works():
    def serve() -> str:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        left.sendmsg([b"ping"])
        listener = socket.create_server(("127.0.0.1", 0))
        os.kill(os.getpid(), 0)
        with open("/proc/self/status") as status:
            status.read()
        listener.close()
        return right.recv(10).decode()

    assert in_child(confined(serve)) == (0, "ping")
