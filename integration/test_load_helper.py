"""The load helper counts what the load tests assert on: resets, non-2xx, refused connections.

A small server in the test process misbehaves on purpose (loopback only); with
``failed`` always 0, every test under load would pass whatever happened.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from integration.harness import free_port
from integration.load import Load

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Server:
    """Answers 200, except every 10th connection (reset) and every 10th + 5 (503)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self.connections = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.recv(65536)
                if self.connections % 10 == 0:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif self.connections % 10 == 5:
                    conn.sendall(UNAVAILABLE)
                else:
                    conn.sendall(OK)

    def close(self) -> None:
        if self.listener.fileno() != -1:
            self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


def test_resets_and_non_2xx_responses_are_failed_requests(server: Server):
    with Load(f"http://127.0.0.1:{server.port}/", seconds=1, after=0, connections=4) as load:
        pass
    result = load.result
    assert result.read_errors > 0, result
    assert result.non_2xx > 0, result
    assert result.requests > result.failed
    assert result.failed == result.read_errors + result.non_2xx + result.timeouts


def test_connections_refused_once_the_server_is_gone_are_failed_requests(server: Server):
    with Load(f"http://127.0.0.1:{server.port}/", seconds=1, connections=4) as load:
        server.close()
        time.sleep(0.5)
    # wrk connects without blocking: a refusal shows when it writes (or as a connect error).
    assert load.result.connect_errors + load.result.write_errors > 0, load.result
