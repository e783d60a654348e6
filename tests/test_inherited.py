"""Tests for broker/inherited.py: the sockets systemd passes, checked against their sections."""

from __future__ import annotations

import os
import socket

import pytest

from chapiteau.broker.inherited import (
    InheritError,
    ListenFd,
    activated_sockets,
    mismatch,
    take_listen_fds,
)
from chapiteau.protocol.records import replace
from tests.specs import socket_spec


def _spec_of(sock: socket.socket, name: str = "web", **changes: object):
    return socket_spec(name, port=sock.getsockname()[1], **changes)


def test_the_variables_are_taken_out_of_the_environment():
    environ = {"LISTEN_FDS": "0", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "", "A": "b"}
    assert take_listen_fds(environ) == []
    assert environ == {"A": "b"}


def test_fds_meant_for_another_process_are_left_alone(listening):
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "web"}
    assert take_listen_fds(environ) == []
    assert environ == {}


def test_passed_fds_are_named_and_made_close_on_exec():
    # Fd 3 must be open: the test process's own stdin duplicate stands in for it.
    saved = os.dup(3) if _is_open(3) else None
    os.dup2(0, 3, inheritable=True)
    try:
        environ = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "Web"}
        assert take_listen_fds(environ) == [ListenFd(3, "web")]
        assert not os.get_inheritable(3)
    finally:
        if saved is None:
            os.close(3)
        else:
            os.dup2(saved, 3)
            os.close(saved)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_malformed_count_is_refused():
    with pytest.raises(InheritError, match="LISTEN_FDS='x' is not a number"):
        take_listen_fds({"LISTEN_FDS": "x", "LISTEN_PID": str(os.getpid())})


def test_a_socket_that_fits_its_section_is_taken(listening):
    fd = os.dup(listening.fileno())
    taken = activated_sockets({"web": _spec_of(listening)}, [ListenFd(fd, "web")], "c.ini")
    assert taken["web"].fd == fd
    taken["web"].sock.close()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"port": 1}, "is bound to 127.0.0.1:"),
        ({"host": "127.0.0.2"}, "is bound to 127.0.0.1:"),
        ({"type": socket.SOCK_DGRAM}, "is AF_INET SOCK_STREAM, not AF_INET SOCK_DGRAM"),
        ({"proto": 17}, "has protocol 6, not 17"),
        ({"so_reuseport": True}, "uses SO_REUSEPORT"),
    ],
)
def test_a_socket_that_does_not_fit_its_section_is_refused(listening, changes, reason):
    spec = _spec_of(listening)
    assert reason in mismatch(listening, replace(spec, **changes))


def test_a_socket_that_does_not_listen_is_refused():
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert mismatch(bound, _spec_of(bound)) == "is not listening"


def test_any_port_fits_a_section_asking_for_port_0(listening):
    assert mismatch(listening, socket_spec(port=0)) is None


def test_a_refusal_names_the_section_and_closes_every_passed_fd(listening):
    fds = [os.dup(listening.fileno()), os.dup(listening.fileno())]
    passed = [ListenFd(fds[0], "web"), ListenFd(fds[1], "api")]
    with pytest.raises(InheritError, match=r"^/etc/circus.ini:socket:api: the socket systemd"):
        activated_sockets(
            {"web": _spec_of(listening), "api": socket_spec("api", port=1)}, passed, "c.ini"
        )
    assert not any(_is_open(fd) for fd in fds)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "systemd passed fd .* with no name .*: set FileDescriptorName="),
        ("unknown", "with no name"),
        ("api", "systemd passed a socket named 'api' but c.ini has no \\[socket:api\\] section"),
    ],
)
def test_an_fd_no_section_names_is_refused(listening, name, message):
    fd = os.dup(listening.fileno())
    with pytest.raises(InheritError, match=message):
        activated_sockets({"web": _spec_of(listening)}, [ListenFd(fd, name)], "c.ini")
    assert not _is_open(fd)


def test_the_same_socket_twice_under_one_name_is_taken_once(listening):
    fds = [os.dup(listening.fileno()), os.dup(listening.fileno())]
    passed = [ListenFd(fd, "web") for fd in fds]
    taken = activated_sockets({"web": _spec_of(listening)}, passed, "c.ini")
    assert taken["web"].fd == fds[0] and not _is_open(fds[1])
    taken["web"].sock.close()


def test_two_sockets_under_one_name_are_refused(listening):
    second = socket.socket()
    second.bind(("127.0.0.1", 0))
    second.listen(1)
    passed = [ListenFd(os.dup(listening.fileno()), "web"), ListenFd(second.detach(), "web")]
    with pytest.raises(InheritError, match="two different sockets named 'web'"):
        activated_sockets({"web": socket_spec(port=0)}, passed, "c.ini")
