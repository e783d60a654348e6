"""broker/sd_notify.py against a real datagram socket standing in for systemd."""

from __future__ import annotations

import array
import os
import socket
from pathlib import Path

from chapiteau.broker.sd_notify import Notifier


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    message, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    fds = array.array("i")
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds)


def test_without_notify_socket_send_does_nothing() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_message_reaches_the_socket_and_the_variable_is_taken_out(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        environ = {"NOTIFY_SOCKET": path, "HOME": "/root"}
        notifier = Notifier.from_environment(environ)
        assert environ == {"HOME": "/root"}
        assert notifier.send("READY=1", "STATUS=serving")
        assert receive(manager) == (b"READY=1\nSTATUS=serving", [])
        notifier.close()


def test_abstract_address_and_fds(tmp_path: Path) -> None:
    name = f"chapiteau-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(b"\0" + name.encode())
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        read_end, write_end = os.pipe()
        try:
            assert notifier.send("FDSTORE=1", "FDNAME=web", fds=[read_end])
            message, fds = receive(manager)
            assert message == b"FDSTORE=1\nFDNAME=web"
            assert len(fds) == 1 and os.path.sameopenfile(fds[0], read_end)
            os.close(fds[0])
        finally:
            os.close(read_end)
            os.close(write_end)
            notifier.close()


def test_a_vanished_manager_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.send("READY=1") is False


def test_watchdog_variables_are_taken_out_and_count_only_for_this_process(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    ours = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(ours).watchdog_usec == 3_000_000
    assert ours == {}
    theirs = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environment(theirs).watchdog_usec == 0
    assert theirs == {}
    assert (
        Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "x"}).watchdog_usec == 0
    )
    assert Notifier.from_environment({"WATCHDOG_USEC": "3000000"}).watchdog_usec == 0
