"""``chapiteauctl tail -f NAME`` follows a real worker's output file as it is written."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from pathlib import Path

from integration.harness import DEFAULT_TIMEOUT, free_port, wait_until
from integration.test_chapiteauctl import CTL, Ctl


def read_lines(process: subprocess.Popen[bytes], count: int) -> list[str]:
    """The first ``count`` lines ``process`` prints, waiting at most DEFAULT_TIMEOUT."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    data = b""
    while data.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; read {data!r}"
        if selector.select(remaining):
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f"tail ended; read {data!r}"
            data += chunk
    return data.decode().splitlines()[:count]


def test_tail_follow_prints_the_lines_a_worker_writes(chapiteau, workdir: Path) -> None:
    logs = workdir / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    chapiteau(f"""
[circus]
endpoint = {endpoint}
pubsub_endpoint = tcp://127.0.0.1:{free_port()}

[broker]
user = nobody

[watcher:ticker]
cmd = sh -c 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.05; done'
stdout_stream.class = FileStream
stdout_stream.filename = {logs}/ticker.log
""")
    ctl = Ctl(endpoint)
    wait_until(lambda: ctl("list", timeout=1).returncode == 0)
    log = logs / "ticker.log"
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 3)

    process = subprocess.Popen(
        [str(CTL), "--endpoint", endpoint, "tail", "-f", "-n", "2", "ticker"],
        stdout=subprocess.PIPE,
    )
    try:
        lines = read_lines(process, 40)
    finally:
        process.kill()
        process.wait()
    # -n 2 prints two lines of the file, then every later line follows, in order.
    ticks = [int(line.removeprefix("tick ")) for line in lines]
    assert ticks == list(range(ticks[0], ticks[0] + 40))
