"""What the broker tells systemd about the service: ready, reloading, stopping, alive.

The broker's loop calls one method per event of the service's life, and this
module turns it into the notify protocol (broker/sd_notify.py):

* ``READY=1`` once the first supervisor is ready (``MAINPID=`` too when the
  broker is not the process systemd started, as with ``--daemon``), with a
  ``STATUS=`` line; every later supervisor's readiness updates that line.
* on SIGHUP, ``RELOADING=1`` with ``MONOTONIC_USEC=`` (what ``Type=notify-reload``
  requires), then ``READY=1`` when the supervisor says the reload is over, or
  failed, or died meanwhile (its successor's readiness ends the reload).
* ``STOPPING=1`` once, when the broker starts stopping.
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` from the broker's loop, only when
  systemd asked for it: without a watchdog, nothing here ever wakes the loop.

Every ``STATUS=`` text is the broker's own wording, on one line: nothing a
peer wrote reaches systemd. Without ``NOTIFY_SOCKET`` the sends do nothing.
"""

from __future__ import annotations

import os
import time

from chapiteau.broker.sd_notify import Notifier


class ServiceManager:
    """The service's state as systemd sees it, and the watchdog's timer."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.ready = False
        self.reloads = 0
        """SIGHUPs forwarded to the supervisor whose reload is not over yet."""
        self.stopping = False
        self.watchdog_interval = notifier.watchdog_usec / 2e6 if notifier.watchdog_usec else None
        self.watchdog_at = time.monotonic() if self.watchdog_interval else None
        """When the next ``WATCHDOG=1`` is due (monotonic clock); None: no watchdog."""

    def supervisor_ready(self, status: str) -> None:
        """A supervisor serves: start-up is over, and so is any reload under way."""
        assignments = ["READY=1", _status(status)]
        if not self.ready and os.getpid() != self.notifier.main_pid:
            assignments.insert(0, f"MAINPID={os.getpid()}")
        self.ready = True
        self.reloads = 0
        self.notifier.send(*assignments)

    def reloading(self, forwarded: bool) -> None:
        """SIGHUP: ``forwarded`` to a supervisor, whose ``reload_done`` ends it; else over now."""
        if not self.ready or self.stopping:
            return
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")
        if forwarded:
            self.reloads += 1
        elif not self.reloads:
            self.notifier.send("READY=1", "STATUS=reload: no supervisor runs, nothing to reload")

    def reload_done(self, ok: bool) -> None:
        """The supervisor finished one reload; the last one pending makes the service ready."""
        if not self.reloads or self.stopping:
            return
        self.reloads -= 1
        if not self.reloads:
            outcome = "reloaded" if ok else "reload failed: a watcher kept its old processes (log)"
            self.notifier.send("READY=1", f"STATUS={outcome}")

    def status(self, status: str) -> None:
        """A line for ``systemctl status`` (a supervisor died, is being restarted...)."""
        if not self.stopping:
            self.notifier.send(_status(status))

    def stop(self) -> None:
        """The broker starts stopping: said once."""
        if not self.stopping:
            self.stopping = True
            self.notifier.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self, now: float) -> None:
        """Ping the watchdog when it is due, and schedule the next ping."""
        if self.watchdog_at is not None and self.watchdog_interval and now >= self.watchdog_at:
            self.notifier.send("WATCHDOG=1")
            self.watchdog_at = now + self.watchdog_interval


def _status(text: str) -> str:
    """``STATUS=text`` on one line: a line break would start another assignment."""
    return "STATUS=" + " ".join(text.split())
