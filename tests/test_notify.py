"""supervisor/io/notify.py: the NOTIFY_SOCKET accepts a worker's tree only, and survives garbage."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Mapping

import pytest

from chapiteau.supervisor.io.notify import (
    MAX_ANCESTRY,
    Malformed,
    NotifySocket,
    parse_message,
    worker_of,
)

WAIT = 15.0

SENDER = """
import os, socket, sys
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\\0" + address[1:]
sys.stdin.readline()
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    for message in sys.argv[1:]:
        sock.sendto(message.encode("latin-1").decode("unicode_escape").encode("latin-1"), address)
"""
"""Sends each argument as one datagram once a line arrives on stdin (sd_notify's way)."""


def test_parse_message_reads_assignments() -> None:
    assert parse_message(b"READY=1\nSTATUS=up: 3 = three\n") == {
        "READY": "1",
        "STATUS": "up: 3 = three",
    }


@pytest.mark.parametrize("data", [b"", b"\n", b"READY", b"=1", b"ready=1", b"\xff=1", b"A B=1"])
def test_parse_message_refuses_what_is_not_key_value_lines(data: bytes) -> None:
    with pytest.raises(Malformed):
        parse_message(data)


def test_worker_of_walks_up_to_a_worker_and_no_further() -> None:
    parents = {30: 20, 20: 10, 10: 1}
    assert worker_of(30, {10}.__contains__, parents.get) == 10
    assert worker_of(10, {10}.__contains__, parents.get) == 10
    assert worker_of(30, {99}.__contains__, parents.get) is None
    chain = {pid: pid - 1 for pid in range(2, 200)}
    assert worker_of(2 + MAX_ANCESTRY, {2}.__contains__, chain.get) == 2
    assert worker_of(3 + MAX_ANCESTRY, {2}.__contains__, chain.get) is None


class Listening:
    """A NotifySocket on a running loop, with the workers it accepts and what it delivered."""

    def __init__(self) -> None:
        self.workers: set[int] = set()
        self.delivered: asyncio.Queue[tuple[int, Mapping[str, str]]] = asyncio.Queue()
        self.socket = NotifySocket(
            asyncio.get_running_loop(),
            self.workers.__contains__,
            lambda pid, fields: self.delivered.put_nowait((pid, fields)),
        )

    async def run(self, argv: list[str], *messages: str, worker: str = "self") -> int:
        """Run ``argv`` + the sender with ``messages``; ``worker``: "self" (the process run)
        is a worker, or "none". Returns its pid once it sent everything and exited."""
        env = {**os.environ, "NOTIFY_SOCKET": self.socket.address}
        child = subprocess.Popen(
            [*argv, sys.executable, "-c", SENDER, *messages], stdin=subprocess.PIPE, env=env
        )
        if worker == "self":
            self.workers.add(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.close()
        await asyncio.wait_for(asyncio.to_thread(child.wait), WAIT)
        return child.pid

    async def next(self) -> tuple[int, Mapping[str, str]]:
        return await asyncio.wait_for(self.delivered.get(), WAIT)


def run(test: object) -> None:
    asyncio.run(test())  # type: ignore[operator]


def test_the_address_is_abstract_and_random() -> None:
    async def test() -> None:
        first, second = Listening(), Listening()
        assert first.socket.address.startswith("@chapiteau-notify/")
        assert first.socket.address != second.socket.address
        first.socket.close()
        second.socket.close()

    run(test)


def test_a_worker_message_is_delivered_with_the_worker_pid() -> None:
    async def test() -> None:
        listening = Listening()
        pid = await listening.run([], "READY=1\\nSTATUS=serving")
        assert await listening.next() == (pid, {"READY": "1", "STATUS": "serving"})
        listening.socket.close()

    run(test)


def test_a_descendant_of_a_worker_speaks_for_it() -> None:
    async def test() -> None:
        listening = Listening()
        # The worker is the shell; python, its child, sends.
        pid = await listening.run(["sh", "-c", '"$@"; exit 0', "sh"], "READY=1")
        assert await listening.next() == (pid, {"READY": "1"})
        listening.socket.close()

    run(test)


def test_a_stranger_is_not_heard_and_garbage_is_dropped() -> None:
    async def test() -> None:
        listening = Listening()
        await listening.run([], "READY=1", worker="none")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", "\0" + listening.socket.address[1:])
        pid = await listening.run([], "\\xff\\xfe", "no assignment", "X=" + "y" * 5000, "READY=1")
        # Only the last, well-formed message of the worker comes through.
        assert await listening.next() == (pid, {"READY": "1"})
        assert listening.delivered.empty()
        listening.socket.close()

    run(test)


def test_fds_sent_along_are_closed() -> None:
    async def test() -> None:
        listening = Listening()
        listening.workers.add(os.getpid())
        read, write = os.pipe()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            address = "\0" + listening.socket.address[1:]
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write]).tobytes())
            sock.sendmsg([b"FDSTORE=1"], [rights], 0, address)
        os.close(write)
        assert await listening.next() == (os.getpid(), {"FDSTORE": "1"})
        # Every copy of the write end is closed: the read end sees EOF (not EAGAIN).
        os.set_blocking(read, False)
        assert os.read(read, 1) == b""
        os.close(read)
        listening.socket.close()

    run(test)


def test_a_given_address_is_bound_and_refused_once_taken() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        first = NotifySocket(loop, set().__contains__, print)
        try:
            with pytest.raises(OSError):
                NotifySocket(loop, set().__contains__, print, first.address)
        finally:
            first.close()
        again = NotifySocket(loop, set().__contains__, print, first.address)
        assert again.address == first.address
        again.close()

    asyncio.run(run())
