"""A one-connection-at-a-time HTTP server that gets its listening socket the systemd way.

It reads ``LISTEN_PID`` and ``LISTEN_FDS`` exactly as ``sd_listen_fds(3)`` does:
the sockets are fds 3 to 3 + LISTEN_FDS - 1, only if LISTEN_PID is this
process's pid; they are then made close-on-exec and the variables (and
``LISTEN_FDNAMES``) removed from the environment, as with
``unset_environment`` true. It serves the first socket, one response per
connection; SIGTERM stops it gracefully: it accepts nothing more, and the
request in hand is answered first.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

SD_LISTEN_FDS_START = 3


def sd_listen_fds(unset_environment: bool = True) -> int:
    """How many sockets were passed (0 if they were meant for another process)."""
    try:
        if "LISTEN_PID" not in os.environ:
            return 0
        pid = int(os.environ["LISTEN_PID"])
        if pid <= 0:
            raise ValueError(f"LISTEN_PID={pid}")
        if pid != os.getpid():
            return 0
        count = int(os.environ.get("LISTEN_FDS", ""))
        if count < 0:
            raise ValueError(f"LISTEN_FDS={count}")
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
            os.set_inheritable(fd, False)
        return count
    finally:
        if unset_environment:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)


def answer(listener: socket.socket) -> None:
    """Accept one connection if one is waiting (another process may have taken it)."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    with conn:
        conn.setblocking(True)
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                return
            request += chunk
        body = f"served by {os.getpid()}\n".encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


def main() -> int:
    if sd_listen_fds() < 1:
        print("no socket passed: LISTEN_PID/LISTEN_FDS not set for this process", file=sys.stderr)
        return 1
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    listener.setblocking(False)
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    wakeup, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wakeup, selectors.EVENT_READ)
    while not stopping:
        for key, _ in selector.select():
            if key.fileobj is listener and not stopping:
                answer(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
