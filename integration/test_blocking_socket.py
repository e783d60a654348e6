"""A worker written like the Circus docs' example (a blocking ``accept()``) and ``blocking``.

The sockets a worker inherits are non-blocking, as in Circus: such a worker
crashes on BlockingIOError at its first ``accept()`` with no client waiting.
``blocking = true`` on the socket makes it serve.
"""

from __future__ import annotations

from pathlib import Path

from integration.harness import free_port, http_get

# The shape of the Circus documentation's socket example: fromfd, then accept in a loop.
BLOCKING_WORKER = """\
import socket, sys
sock = socket.fromfd(int(sys.argv[1]), socket.AF_INET, socket.SOCK_STREAM)
while True:
    conn, _ = sock.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 8\\r\\n\\r\\naccepted")
    conn.close()
"""


def config(port: int, blocking: str) -> str:
    return f"""
[broker]
user = nobody

[socket:web]
host = 127.0.0.1
port = {port}
{blocking}

[watcher:web]
cmd = python3 blocking_worker.py $(circus.sockets.web)
copy_env = true
"""


def write_worker(workdir: Path) -> None:
    (workdir / "blocking_worker.py").write_text(BLOCKING_WORKER)
    (workdir / "blocking_worker.py").chmod(0o644)


def test_a_blocking_accept_worker_serves_on_a_blocking_socket(chapiteau, workdir):
    write_worker(workdir)
    port = free_port()
    tree = chapiteau(config(port, "blocking = true"))
    tree.worker_pids("web", 1)
    assert http_get(port) == "accepted"
    assert not tree.events_named("process_reaped")


def test_a_blocking_accept_worker_crashes_on_a_default_socket(chapiteau, workdir):
    write_worker(workdir)
    tree = chapiteau(config(free_port(), ""))
    tree.wait_for("crash_loop_backoff", where=lambda e: e["watcher"] == "web")
    assert "BlockingIOError" in tree.log_path.read_text()
