"""Tests for chapiteau.supervisor.io.redirector."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from chapiteau.supervisor.io.redirector import READ_SIZE, Redirector, split_incomplete_utf8
from chapiteau.supervisor.io.streams import Chunk, FileStream
from tests.waiting import wait_until_async


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def spawn(script: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start ``sh -c script`` with stdout and stderr on pipes; their read ends."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    child = subprocess.Popen(["/bin/sh", "-c", script], stdout=out_write, stderr=err_write)
    os.close(out_write)
    os.close(err_write)
    return child, out_read, err_read


def is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_child_output_lands_in_file_streams(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    out, err = FileStream(str(tmp_path / "out.log")), FileStream(str(tmp_path / "err.log"))
    child, out_fd, err_fd = spawn("echo hi; echo err >&2")
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", out)
    redirector.add(err_fd, child.pid, "stderr", err)

    async def both_pipes_at_eof() -> None:
        await wait_until_async(lambda: is_closed(out_fd) and is_closed(err_fd))

    loop.run_until_complete(both_pipes_at_eof())
    child.wait()
    assert (tmp_path / "out.log").read_text() == "hi\n"
    assert (tmp_path / "err.log").read_text() == "err\n"


def test_chunks_carry_pid_and_stream_name(loop: asyncio.AbstractEventLoop) -> None:
    received: list[Chunk] = []
    child, out_fd, err_fd = spawn("echo hi")
    os.close(err_fd)
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", received.append)
    loop.run_until_complete(wait_until_async(lambda: is_closed(out_fd)))
    child.wait()
    assert received == [{"data": b"hi\n", "pid": child.pid, "name": "stdout"}]


def test_remove_pid_delivers_output_left_in_the_pipe(loop: asyncio.AbstractEventLoop) -> None:
    received: list[bytes] = []
    child, out_fd, err_fd = spawn("echo one; echo two >&2")
    child.wait()
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", lambda chunk: received.append(chunk["data"]))
    redirector.add(err_fd, child.pid, "stderr", lambda chunk: received.append(chunk["data"]))
    redirector.remove_pid(child.pid)
    assert sorted(received) == [b"one\n", b"two\n"]
    assert is_closed(out_fd) and is_closed(err_fd)


def test_remove_pid_leaves_other_processes_alone(loop: asyncio.AbstractEventLoop) -> None:
    first, first_out, first_err = spawn("true")
    second, second_out, second_err = spawn("true")
    redirector = Redirector(loop)
    for fd, child in (
        (first_out, first),
        (first_err, first),
        (second_out, second),
        (second_err, second),
    ):
        redirector.add(fd, child.pid, "stdout", lambda chunk: None)
    redirector.remove_pid(first.pid)
    assert not is_closed(second_out) and not is_closed(second_err)
    redirector.close()
    assert is_closed(second_out) and is_closed(second_err)
    first.wait()
    second.wait()


def test_a_failing_stream_is_logged_and_reading_goes_on(loop: asyncio.AbstractEventLoop) -> None:
    received: list[bytes] = []

    def broken(chunk: Chunk) -> None:
        raise OSError(28, "No space left on device")

    child, out_fd, err_fd = spawn("echo lost; sleep 0.1; echo err >&2")
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", broken)
    redirector.add(err_fd, child.pid, "stderr", lambda chunk: received.append(chunk["data"]))
    with capture_logs() as logs:
        loop.run_until_complete(wait_until_async(lambda: is_closed(out_fd) and is_closed(err_fd)))
    child.wait()
    assert received == [b"err\n"]
    [failure] = [entry for entry in logs if entry["event"] == "stream_write_failed"]
    assert failure["pid"] == child.pid and failure["name"] == "stdout"
    assert failure["log_level"] == "error"


def test_a_failing_stream_is_logged_once_until_it_recovers(loop: asyncio.AbstractEventLoop) -> None:
    calls = []

    def flaky(chunk: Chunk) -> None:
        calls.append(chunk)
        if len(calls) <= 3:
            raise OSError(28, "No space left on device")

    read_end, write_end = os.pipe()
    redirector = Redirector(loop)
    redirector.add(read_end, 1, "stdout", flaky)

    async def write_four_chunks() -> None:
        for count in range(1, 5):
            os.write(write_end, b"x")
            await wait_until_async(lambda: len(calls) == count)  # noqa: B023 - awaited at once

    with capture_logs() as logs:
        loop.run_until_complete(write_four_chunks())
    os.close(write_end)
    redirector.close()
    events = [entry["event"] for entry in logs]
    assert events == ["stream_write_failed", "stream_write_recovered"]
    assert logs[1]["lost_chunks"] == 3


def test_one_wake_up_reads_at_most_64_kib(loop: asyncio.AbstractEventLoop) -> None:
    sizes: list[int] = []
    child, out_fd, err_fd = spawn("head -c 1048576 /dev/zero")
    os.close(err_fd)
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", lambda chunk: sizes.append(len(chunk["data"])))
    loop.run_until_complete(wait_until_async(lambda: is_closed(out_fd)))
    child.wait()
    assert sum(sizes) == 1048576
    assert max(sizes) <= READ_SIZE


def test_a_chatty_child_does_not_starve_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    total = 0

    def count(chunk: Chunk) -> None:
        nonlocal total
        total += len(chunk["data"])

    child, out_fd, err_fd = spawn("exec yes")
    os.close(err_fd)
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", count)

    # A redirector that read until the pipe is empty would never return to the loop
    # (`yes` never stops): the timer would not fire, and the test would hang.
    try:
        loop.run_until_complete(asyncio.sleep(0.05))
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
        redirector.close()
    assert total > 0


def unread_bytes(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_character_split_by_a_read_is_written_whole(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    stream = FileStream(str(tmp_path / "out.log"))
    text = "a" * (READ_SIZE - 1) + "é"
    child, out_fd, err_fd = spawn(f"printf '%s' '{text}'")
    os.close(err_fd)
    # Once the 64 KiB pipe is full, the first read ends between the two bytes of "é".
    deadline = time.monotonic() + 5
    while unread_bytes(out_fd) < READ_SIZE:
        assert time.monotonic() < deadline, "the pipe never filled"
        time.sleep(0.01)
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", stream)
    loop.run_until_complete(wait_until_async(lambda: is_closed(out_fd)))
    child.wait()
    assert (tmp_path / "out.log").read_text(encoding="utf-8") == text


def test_an_unfinished_character_at_end_of_file_is_still_delivered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    received: list[bytes] = []
    child, out_fd, err_fd = spawn("printf 'x\\303'")
    os.close(err_fd)
    redirector = Redirector(loop)
    redirector.add(out_fd, child.pid, "stdout", lambda chunk: received.append(chunk["data"]))
    loop.run_until_complete(wait_until_async(lambda: is_closed(out_fd)))
    child.wait()
    assert b"".join(received) == b"x\xc3"


def test_an_added_pipe_is_not_inherited_by_workers(loop: asyncio.AbstractEventLoop) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    redirector = Redirector(loop)
    redirector.add(read_end, 1, "stdout", lambda chunk: None)
    assert not os.get_inheritable(read_end)
    os.close(write_end)
    redirector.close()


def test_the_same_fd_cannot_be_added_twice(loop: asyncio.AbstractEventLoop) -> None:
    read_end, write_end = os.pipe()
    redirector = Redirector(loop)
    redirector.add(read_end, 1, "stdout", lambda chunk: None)
    with pytest.raises(ValueError, match="already redirected"):
        redirector.add(read_end, 1, "stdout", lambda chunk: None)
    os.close(write_end)
    redirector.close()


def feed(pieces: list[bytes]) -> list[bytes]:
    """What the redirector delivers for these reads followed by end of file."""
    delivered, pending = [], b""
    for piece in pieces:
        ready, pending = split_incomplete_utf8(pending + piece)
        delivered.append(ready)
    delivered.append(pending)
    return delivered


utf8_ish = st.one_of(
    st.text().map(lambda text: text.encode("utf-8")),
    st.binary(),
    st.lists(
        st.sampled_from(
            [b"a", b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"\xff"]
        )
    ).map(b"".join),
)


@given(utf8_ish, st.lists(st.integers(min_value=0, max_value=64)))
def test_split_reads_decode_like_the_whole_output(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(data)) for cut in cuts})
    pieces = [
        data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)
    ]
    delivered = feed(pieces)
    assert b"".join(delivered) == data
    decoded = "".join(piece.decode("utf-8", "replace") for piece in delivered)
    assert decoded == data.decode("utf-8", "replace")


@given(st.binary())
def test_at_most_three_bytes_are_held_back(data: bytes) -> None:
    ready, tail = split_incomplete_utf8(data)
    assert ready + tail == data
    assert len(tail) <= 3
