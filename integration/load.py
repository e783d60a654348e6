"""A real HTTP load (wrk) kept running while a test acts, and what it saw.

    with Load("http://127.0.0.1:8000/", seconds=4) as load:
        time.sleep(1)
        control.call("reload", name="web", graceful=True)
        wait_until(...)                 # the operation is over
    assert load.result.failed == 0, load.result

wrk (Debian's ``wrk``) runs from the start of the ``with`` block for at least
``seconds`` and at least ``after`` seconds after the block ends (so that what
follows an operation is loaded too), then gets SIGINT, prints its totals and
exits; it never runs longer than ``limit`` seconds. ``integration/load.lua``
makes it print one line of machine-readable totals, parsed into a `Result`:
``failed`` counts connect errors, read and write errors (a reset, or a
connection closed before a whole response; wrk connects without blocking, so a
refused connection mostly shows as a write error), timeouts (no response within
``timeout`` seconds; wrk leaves such a request out of its latency figures, so
the max latency is only true when there is none) and responses that are not
2xx.

Every request carries ``Connection: close`` unless ``keep_alive=True``. A
server that stops gracefully closes its idle keep-alive connections, and a
client may have sent its next request on one at that very moment: that request
fails (a read error) through no fault of the manager, which only chose when the
server stops (RFC 9112, 9.6: such a client must retry; wrk does not). With one
connection per request, a failure means a connection refused, reset or left
unanswered, which is what these tests are about. Both gunicorn's sync workers
and the test servers here close after each response anyway.

The bench (``bench/zero_downtime.py``) uses the same class for its table.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SCRIPT = Path(__file__).resolve().with_name("load.lua")
RESULT = re.compile(r"^load-result ((?:\w+=\d+ ?)+)$", re.MULTILINE)


@dataclass(frozen=True)
class Result:
    """wrk's totals for one load."""

    requests: int
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    max_latency_ms: float
    seconds: float

    @property
    def failed(self) -> int:
        """Requests that were not served: refused, reset, unanswered, or not 2xx."""
        return (
            self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
            + self.non_2xx
        )

    def __str__(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s, {self.failed} failed "
            f"(connect {self.connect_errors}, read {self.read_errors}, "
            f"write {self.write_errors}, timeout {self.timeouts}, non-2xx {self.non_2xx}), "
            f"max latency {self.max_latency_ms:.1f} ms"
        )


def parse(output: str) -> Result:
    """The `Result` in wrk's standard output (the line ``load.lua`` prints)."""
    match = RESULT.search(output)
    if match is None:
        raise AssertionError(f"no load-result line in wrk's output:\n{output}")
    values = dict(pair.split("=") for pair in match.group(1).split())
    return Result(
        requests=int(values["requests"]),
        non_2xx=int(values["non2xx"]),
        connect_errors=int(values["connect"]),
        read_errors=int(values["read"]),
        write_errors=int(values["write"]),
        timeouts=int(values["timeout"]),
        max_latency_ms=int(values["max_latency_us"]) / 1000,
        seconds=int(values["duration_us"]) / 1e6,
    )


def wait_answering(url: str, timeout: float = 30.0) -> None:
    """Return once one GET of ``url`` gets a response (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            return
        except urllib.request.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Load:
    """wrk against ``url`` (loopback) while the ``with`` block runs; ``result`` afterwards."""

    def __init__(
        self,
        url: str,
        seconds: float = 4.0,
        after: float = 1.0,
        threads: int = 2,
        connections: int = 32,
        timeout: int = 5,
        keep_alive: bool = False,
        limit: float = 120.0,
        warmup: float = 0.3,
    ) -> None:
        self.url = url
        self.seconds = seconds
        self.after = after
        self.limit = limit
        self.warmup = warmup
        self.argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{int(limit)}s",
            f"--timeout={timeout}s",
            "-s",
            str(SCRIPT),
            *([] if keep_alive else ["-H", "Connection: close"]),
            url,
        ]
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self._result: Result | None = None

    def __enter__(self) -> Load:
        """Wait until ``url`` answers, start wrk, and return once it has been running ``warmup``."""
        wait_answering(self.url)
        self.started = time.monotonic()
        # A session of its own: its own scheduling group, and out of the test's signals.
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        time.sleep(self.warmup)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Let the load go on as long as it should, stop wrk and parse what it printed."""
        assert self.process is not None
        try:
            if kind is not None:
                return
            if self.process.poll() is not None:
                output, _ = self.process.communicate()
                raise AssertionError(
                    f"wrk ended before the block did (limit {self.limit} s):\n{output}"
                )
            end = max(self.started + self.seconds, time.monotonic() + self.after)
            time.sleep(max(0.0, end - time.monotonic()))
            self.process.send_signal(signal.SIGINT)
            output, _ = self.process.communicate(timeout=30)
            if self.process.returncode != 0:
                raise AssertionError(f"wrk exited {self.process.returncode}:\n{output}")
            self._result = parse(output)
        finally:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()

    @property
    def result(self) -> Result:
        """wrk's totals, once the ``with`` block is over."""
        if self._result is None:
            raise AssertionError("no result: the load has not ended normally")
        return self._result
