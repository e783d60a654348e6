"""Keep fds for the supervisor across its generations, never reading them.

The supervisor asks the broker to keep two kinds of objects alive while it is
dead or being replaced: the read ends of its workers' output pipes (so that a
worker writing after the supervisor's death gets no SIGPIPE) and memfds with
its own state for the next supervisor. The broker makes every such object
itself (``pipe2``, ``memfd_create``) and hands the supervisor copies: it never
accepts an fd from a peer, because an fd a peer chose may block the broker on
fstat or close (a file on a FUSE mount in the peer's user namespace, a TCP
socket lingering on unsent data). A pipe or a memfd made here closes at once
and carries no authority: the only thing a hostile supervisor gains is memory
it could use anyway, bounded by ``max_held_fds``.

The broker never reads or parses what is held; it keeps, copies on request,
and closes on ``release`` or when it stops.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable

from chapiteau.protocol.broker_messages import MAX_HELD_PER_REPLY, ProtocolError

PIPE = 2
"""Fds a new pipe is handed over with: the read end (kept here too), then the write end."""


class HeldFds:
    """Fds kept by key, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._fds: dict[str, int] = {}
        self._sorted: list[str] | None = []
        """The keys in order, kept between pages (None: to sort again)."""

    def __len__(self) -> int:
        return len(self._fds)

    def hold_pipes(self, keys: Iterable[str]) -> list[int]:
        """Make a pipe per key, keep its read end; return [read, write] per key.

        The caller sends them and closes the write ends (the supervisor's copy
        is the only one a worker should inherit). ProtocolError: over the limit
        or out of fds, and nothing was changed.
        """
        keys = list(dict.fromkeys(keys))
        self._check_room(keys)
        made: list[int] = []
        try:
            for _ in keys:
                made.extend(os.pipe2(os.O_CLOEXEC))
        except OSError as exc:
            _close(made)
            raise ProtocolError("hold_failed", f"cannot make a pipe: {exc.strerror}") from None
        for index, key in enumerate(keys):
            self._keep(key, made[PIPE * index])
        return made

    def hold_memfd(self, key: str) -> int:
        """Make an empty memfd under ``key`` (replacing what was there); return it."""
        self._check_room([key])
        try:
            fd = os.memfd_create(f"chapiteau-{key}", os.MFD_CLOEXEC)
        except OSError as exc:
            raise ProtocolError("hold_failed", f"cannot make a memfd: {exc.strerror}") from None
        self._keep(key, fd)
        return fd

    def release(self, keys: Iterable[str]) -> None:
        closed = [fd for fd in (self._fds.pop(key, None) for key in keys) if fd is not None]
        if closed:
            self._sorted = None
        _close(closed)

    def page(self, after: str) -> tuple[list[tuple[str, int]], bool]:
        """The (key, fd) pairs after ``after`` in key order, one reply's worth, and whether
        more follow. The broker keeps holding them: sending copies them."""
        if self._sorted is None:
            self._sorted = sorted(self._fds)
        keys = self._sorted
        start = bisect.bisect_right(keys, after)
        chosen = keys[start : start + MAX_HELD_PER_REPLY]
        return [(key, self._fds[key]) for key in chosen], start + len(chosen) < len(keys)

    def close(self) -> None:
        self.release(list(self._fds))

    def _check_room(self, keys: list[str]) -> None:
        new = sum(1 for key in keys if key not in self._fds)
        if len(self._fds) + new > self.limit:
            raise ProtocolError(
                "too_many",
                f"the broker holds {len(self._fds)} fds, at most {self.limit} "
                "([broker] max_held_fds): release some first",
            )

    def _keep(self, key: str, fd: int) -> None:
        self._sorted = None
        old = self._fds.get(key)
        self._fds[key] = fd
        if old is not None:
            os.close(old)


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)
