"""``chapiteauctl tail [-f] NAME``: print and follow a watcher's output file.

The daemon says where the output goes (``get NAME stdout_stream_conf``); when it is
a file (``FileStream``, ``WatchedFileStream``, ``TimedRotatingFileStream``)
with an absolute path, this machine reads it: so tail works where the file is
visible, on the daemon's machine or on a shared file system. A file renamed
or truncated by rotation is reopened from its start.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any, BinaryIO

POLL = 0.2
"""Seconds between two looks at a followed file."""


class TailError(Exception):
    """The output cannot be read from here; the message says why and what to do."""


def stream_file(name: str, stream: str, options: dict[str, Any]) -> str:
    """The absolute path of ``stream``'s file in ``options`` (a ``get`` reply's options)."""
    conf = options.get(f"{stream}_stream_conf") or {}
    filename = conf.get("filename") if isinstance(conf, dict) else None
    if not filename:
        raise TailError(
            f"watcher {name!r} has no {stream}_stream file: set {stream}_stream.class = "
            f"FileStream and {stream}_stream.filename in [watcher:{name}] to tail it"
        )
    if not os.path.isabs(filename):
        raise TailError(
            f"{stream}_stream.filename of {name!r} is relative ({filename}): it is relative "
            "to the daemon's directory; give an absolute path to tail it"
        )
    return filename


def last_lines(file: BinaryIO, count: int) -> list[bytes]:
    """The last ``count`` lines of ``file`` (read from its start; stream files rotate)."""
    return list(deque(file, maxlen=count)) if count > 0 else []


def tail(path: str, count: int, follow: bool) -> int:
    """Print the last ``count`` lines of ``path``; with ``follow``, then what is appended."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - reopened on rotation below
    except OSError as exc:
        raise TailError(f"cannot read {path}: {exc.strerror}") from None
    out = sys.stdout.buffer
    try:
        out.writelines(last_lines(file, count))
        out.flush()
        while follow:
            data = file.read()
            if data:
                out.write(data)
                out.flush()
                continue
            time.sleep(POLL)
            if _rotated(file, path):
                file.close()
                file = open(path, "rb")  # noqa: SIM115
    except KeyboardInterrupt:
        pass
    finally:
        file.close()
    return 0


def _rotated(file: BinaryIO, path: str) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    before = os.fstat(file.fileno())
    return (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or now.st_size < file.tell()
