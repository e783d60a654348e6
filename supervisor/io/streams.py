"""The stream classes that write worker output.

A stream is a callable that takes one chunk of a worker's output, Circus's dict
``{"data": bytes, "pid": int, "name": "stdout" | "stderr"}``, and has
``close()`` (release the file; the next chunk opens it again) and ``reopen()``
(open the path afresh: on SIGUSR1, after an external logrotate). The class
names, options and output formats are Circus 0.19's, so ``stdout_stream.*`` and
``stderr_stream.*`` sections work unchanged; ``build_stream`` turns such a
section into a stream.

Where this module deliberately differs from Circus (docs/circus-differences.md):

* Every file stream, FileStream included, notices before each write that its
  path was renamed or deleted (logrotate without ``copytruncate``) and opens
  the path again. In Circus only WatchedFileStream does; FileStream keeps
  writing into the deleted file forever (issue #1152). It costs one stat() per
  chunk.
* Files are created by the supervisor, which already runs as the service user,
  so they belong to that user and not to root (issue #990).
* ``rotate_when`` is case-insensitive, as Circus documents but does not do, and
  defaults to ``H`` (Circus crashes without it). Weekly rollover (W0-W6) is
  computed as Python's TimedRotatingFileHandler does; Circus picks a time in
  the past when the weekday is earlier in the week than today.
* ``utc`` is read as a boolean word ("false" is false; Circus's
  ``bool("false")`` is true); an unknown ``color`` is an error instead of a
  random colour.
* Size rotation never rotates an empty file (one chunk larger than
  ``max_bytes`` would otherwise push an empty backup through the rotation);
  with ``backup_count = 0`` the file is never rotated (Circus re-opens the same
  file on every chunk, to the same visible effect).
* Files are written as UTF-8 whatever the locale.
"""

from __future__ import annotations

import importlib
import inspect
import os
import queue
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, BinaryIO, NotRequired, Protocol, TypedDict

import structlog

from chapiteau.protocol.options import OptionError, parse_bool
from chapiteau.supervisor.children.spawn import user_code_loaded

log = structlog.get_logger(__name__)


class Chunk(TypedDict):
    """One read from a worker's pipe, as Circus hands it to a stream."""

    data: bytes
    pid: int
    name: str
    timestamp: NotRequired[float]


class Stream(Protocol):
    """What the supervisor calls; user classes may lack ``close``/``reopen``."""

    def __call__(self, chunk: Chunk) -> None: ...

    def close(self) -> None: ...


class StreamConfigError(ValueError):
    """A stream option in the config is wrong; the message says where and how to fix it.

    Raised by the stream constructors with a message that starts with the
    option's name, so that ``build_stream`` can put the config location in
    front of it.
    """


def close_stream(stream: Callable[[Chunk], None]) -> None:
    """Close a stream, also one from a user class that has no ``close()``."""
    close = getattr(stream, "close", None)
    if callable(close):
        close()


def reopen_stream(stream: Callable[[Chunk], None]) -> None:
    """Re-open a stream's file, also for a user class that has no ``reopen()``."""
    reopen = getattr(stream, "reopen", None)
    if callable(reopen):
        reopen()


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def _chunk_time(chunk: Chunk) -> datetime:
    if "timestamp" in chunk:
        return datetime.fromtimestamp(chunk["timestamp"])
    return datetime.now()


def format_chunk(chunk: Chunk, time_format: str | None) -> str:
    """The text a file stream writes for one chunk, exactly as Circus writes it.

    With a time format every line gets ``"<strftime> [<pid>] | "`` in front;
    Circus then ends the chunk with exactly one newline, also when the worker
    wrote a partial line or several trailing newlines.
    """
    text = _text(chunk["data"])
    if time_format is None:
        return text
    prefix = f"{_chunk_time(chunk).strftime(time_format)} [{chunk['pid']}] | "
    return prefix + text.rstrip("\n").replace("\n", "\n" + prefix) + "\n"


class _FileStreamBase:
    """Append chunks to a file; re-open it when the path no longer names it."""

    def __init__(self, filename: str | None, time_format: str | None) -> None:
        if filename is None:
            fd, filename = tempfile.mkstemp()
            os.close(fd)
        self.filename = filename
        self.time_format = time_format
        self._file: BinaryIO | None = None
        self._identity = (-1, -1)
        self._open()

    def _open(self) -> BinaryIO:
        # Python opens files close-on-exec: a log file never leaks into a worker.
        file = open(self.filename, "ab")  # noqa: SIM115 - kept open for the stream's life
        status = os.fstat(file.fileno())
        self._file = file
        self._identity = (status.st_dev, status.st_ino)
        return file

    def close(self) -> None:
        """Close the file; the next chunk opens it again."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def reopen(self) -> None:
        """Open the path afresh, e.g. after logrotate moved the file away."""
        self.close()
        self._open()

    def _current_file(self) -> BinaryIO:
        if self._file is None:
            return self._open()
        try:
            status = os.stat(self.filename)
        except FileNotFoundError:
            self.reopen()
        else:
            if (status.st_dev, status.st_ino) != self._identity:
                self.reopen()
        assert self._file is not None
        return self._file

    def _should_rollover(self, file: BinaryIO, data: bytes) -> bool:
        return False

    def _do_rollover(self) -> None:
        """Move the current file aside; the caller opens a new one."""

    def __call__(self, chunk: Chunk) -> None:
        file = self._current_file()
        if self._should_rollover(file, chunk["data"]):
            self.close()
            self._do_rollover()
            file = self._open()
        file.write(format_chunk(chunk, self.time_format).encode("utf-8"))
        file.flush()


class FileStream(_FileStreamBase):
    """Write to a file, rotated by size into ``.1 … .N`` like RotatingFileHandler.

    Before a chunk is written, if the file's size plus the chunk's size reaches
    ``max_bytes``, ``file.N-1`` becomes ``file.N`` … and ``file`` becomes
    ``file.1``. ``max_bytes = 0`` or ``backup_count = 0``: no rotation.
    ``filename = None``: a new temporary file (Circus does the same).
    """

    def __init__(
        self,
        filename: str | None = None,
        max_bytes: int = 0,
        backup_count: int = 0,
        time_format: str | None = None,
    ) -> None:
        super().__init__(filename, time_format)
        self.max_bytes = int(max_bytes)
        self.backup_count = int(backup_count)

    def _should_rollover(self, file: BinaryIO, data: bytes) -> bool:
        if self.max_bytes <= 0 or self.backup_count <= 0:
            return False
        size = os.fstat(file.fileno()).st_size
        return size > 0 and size + len(data) >= self.max_bytes

    def _do_rollover(self) -> None:
        for index in range(self.backup_count - 1, 0, -1):
            source = f"{self.filename}.{index}"
            if os.path.exists(source):
                os.replace(source, f"{self.filename}.{index + 1}")
        if os.path.exists(self.filename):
            os.replace(self.filename, f"{self.filename}.1")
        log.debug("stream_rotated", filename=self.filename)


class WatchedFileStream(_FileStreamBase):
    """Write to a file that an external tool (logrotate) rotates.

    Kept for Circus configs: every file stream here re-opens a renamed or
    deleted path, so this is a FileStream that never rotates by itself.
    """

    def __init__(self, filename: str | None = None, time_format: str | None = None) -> None:
        super().__init__(filename, time_format)


_SECOND = 1
_MINUTE = 60
_HOUR = 60 * 60
_DAY = 24 * _HOUR
_WEEK = 7 * _DAY

# rotate_when -> (seconds per interval, backup suffix, what a backup suffix looks like)
_ROTATE_WHEN: Mapping[str, tuple[int, str, str]] = {
    "S": (_SECOND, "%Y%m%d%H%M%S", r"\d{14}"),
    "M": (_MINUTE, "%Y%m%d%H%M", r"\d{12}"),
    "H": (_HOUR, "%Y%m%d%H", r"\d{10}"),
    "D": (_DAY, "%Y%m%d", r"\d{8}"),
    "MIDNIGHT": (_DAY, "%Y%m%d", r"\d{8}"),
    **{f"W{day}": (_WEEK, "%Y%m%d", r"\d{8}") for day in range(7)},
}


def _dst_shift(then_is_dst: int, now_is_dst: int) -> int:
    """Seconds to add to a local time so that a DST change in between is undone."""
    if then_is_dst == now_is_dst:
        return 0
    return _HOUR if now_is_dst else -_HOUR


def next_rollover(current_time: int, when: str, interval: int, utc: bool) -> int:
    """When a TimedRotatingFileStream rotates next, as TimedRotatingFileHandler computes it.

    ``when`` is an upper-case key of ``rotate_when``; ``interval`` is in
    seconds. MIDNIGHT rotates at the next midnight, ``W<d>`` at the midnight
    that ends the next weekday ``d`` (0 is Monday), the others ``interval``
    seconds after ``current_time``.
    """
    if when != "MIDNIGHT" and not when.startswith("W"):
        return current_time + interval
    now = time.gmtime(current_time) if utc else time.localtime(current_time)
    result = current_time + _DAY - ((now.tm_hour * 60 + now.tm_min) * 60 + now.tm_sec)
    if when.startswith("W"):
        day, wanted = now.tm_wday, int(when[1])
        if day != wanted:
            days_to_wait = wanted - day if day < wanted else 6 - day + wanted + 1
            result += days_to_wait * _DAY
            if not utc:
                result += _dst_shift(time.localtime(result).tm_isdst, now.tm_isdst)
    return result


class TimedRotatingFileStream(_FileStreamBase):
    """Write to a file rotated by time like TimedRotatingFileHandler.

    ``rotate_when`` is S, M, H, D, MIDNIGHT or W0-W6 (any case) and
    ``rotate_interval`` a multiple of it; the old file is renamed with a time
    suffix (``app.log.2024010213`` for H), and with ``backup_count > 0`` only
    that many such backups are kept.
    """

    def __init__(
        self,
        filename: str | None = None,
        backup_count: int = 0,
        time_format: str | None = None,
        rotate_when: str = "H",
        rotate_interval: int = 1,
        utc: bool = False,
    ) -> None:
        when = str(rotate_when).strip().upper()
        if when not in _ROTATE_WHEN:
            raise StreamConfigError(
                f"rotate_when: {rotate_when!r} is not one of S, M, H, D, MIDNIGHT, W0-W6"
            )
        if int(rotate_interval) < 1:
            raise StreamConfigError(f"rotate_interval: {rotate_interval!r} must be 1 or more")
        super().__init__(filename, time_format)
        self.backup_count = int(backup_count)
        self.rotate_when = when
        self.utc = bool(utc)
        seconds, self._suffix, backup_pattern = _ROTATE_WHEN[when]
        self._backup_pattern = re.compile(backup_pattern)
        self.interval = seconds * int(rotate_interval)
        assert self._file is not None
        # An existing file continues the period in which it was last written.
        mtime = int(os.fstat(self._file.fileno()).st_mtime)
        self._rollover_at = next_rollover(mtime, when, self.interval, self.utc)

    def _should_rollover(self, file: BinaryIO, data: bytes) -> bool:
        return int(time.time()) >= self._rollover_at

    def _do_rollover(self) -> None:
        current_time = int(time.time())
        period_start = self._rollover_at - self.interval
        if self.utc:
            stamp = time.gmtime(period_start)
        else:
            stamp = time.localtime(period_start)
            shift = _dst_shift(stamp.tm_isdst, time.localtime(current_time).tm_isdst)
            if shift:
                stamp = time.localtime(period_start + shift)
        if os.path.exists(self.filename):
            os.replace(self.filename, f"{self.filename}.{time.strftime(self._suffix, stamp)}")
            log.debug("stream_rotated", filename=self.filename)
        if self.backup_count > 0:
            for backup in self._backups_to_delete():
                os.remove(backup)
        rollover_at = next_rollover(current_time, self.rotate_when, self.interval, self.utc)
        while rollover_at <= current_time:
            rollover_at += self.interval
        self._rollover_at = rollover_at

    def _backups_to_delete(self) -> list[str]:
        directory, basename = os.path.split(os.path.abspath(self.filename))
        prefix = basename + "."
        backups = sorted(
            os.path.join(directory, name)
            for name in os.listdir(directory)
            if name.startswith(prefix) and self._backup_pattern.fullmatch(name[len(prefix) :])
        )
        return backups[: max(0, len(backups) - self.backup_count)]


class StdoutStream:
    """Write worker output to the supervisor's own stdout."""

    def __call__(self, chunk: Chunk) -> None:
        sys.stdout.write(_text(chunk["data"]))
        sys.stdout.flush()

    def close(self) -> None:
        """Nothing to close: stdout belongs to the supervisor."""

    def reopen(self) -> None:
        """Nothing to re-open: stdout belongs to the supervisor."""


COLORS = ("red", "green", "yellow", "blue", "magenta", "cyan", "white")


class FancyStdoutStream(StdoutStream):
    """Write each non-empty line to stdout, coloured and prefixed as Circus does.

    Each line becomes ``ESC[0;3<n>;40m<time> [<pid>] | <line>ESC[0m``, with
    ``n`` the colour's ANSI number; no colour given: a random one, as in Circus.
    """

    def __init__(self, color: str | None = None, time_format: str | None = None) -> None:
        if color is None:
            color = random.choice(COLORS)
        elif color.strip().lower() not in COLORS:
            raise StreamConfigError(f"color: {color!r} is not one of {', '.join(COLORS)}")
        self.color = color.strip().lower()
        self.time_format = time_format or "%Y-%m-%d %H:%M:%S"

    def __call__(self, chunk: Chunk) -> None:
        code = COLORS.index(self.color) + 1
        stamp = _chunk_time(chunk).strftime(self.time_format)
        prefix = f"\033[0;3{code};40m{stamp} [{chunk['pid']}] | "
        for line in _text(chunk["data"]).split("\n"):
            if line:
                sys.stdout.write(f"{prefix}{line}\033[0m\n")
        sys.stdout.flush()


class QueueStream(queue.Queue):
    """Keep chunks in memory, for library use and tests (Circus's QueueStream)."""

    def __call__(self, chunk: Chunk) -> None:
        self.put(chunk)

    def close(self) -> None:
        """Nothing to close."""

    def reopen(self) -> None:
        """Nothing to re-open."""


STREAM_CLASSES: Mapping[str, Callable[..., Stream]] = {
    "FileStream": FileStream,
    "WatchedFileStream": WatchedFileStream,
    "TimedRotatingFileStream": TimedRotatingFileStream,
    "StdoutStream": StdoutStream,
    "FancyStdoutStream": FancyStdoutStream,
    "QueueStream": QueueStream,
}

# Circus configs may name the built-in classes by their Circus module path.
_CIRCUS_MODULES = ("circus.stream.file_stream.", "circus.stream.")

_INT_OPTIONS = {"max_bytes": 0, "backup_count": 0, "rotate_interval": 1}


def _import_class(path: str, where: str) -> Callable[..., Stream]:
    """The class named by ``pkg.mod.Class`` or ``pkg.mod:Class``."""
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise StreamConfigError(
            f"{where}.class: {path!r} is neither a stream class name nor a path such as "
            "mypackage.streams:MyStream"
        )
    user_code_loaded()
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # importing user code can raise anything
        raise StreamConfigError(f"{where}.class: cannot import {path!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise StreamConfigError(
                f"{where}.class: cannot import {path!r}: {module_name!r} has no attribute {part!r}"
            ) from None
    if not callable(found):
        raise StreamConfigError(f"{where}.class: {path!r} is not a class")
    return found


def _resolve_class(path: str, where: str) -> Callable[..., Stream]:
    path = path.strip()
    for prefix in _CIRCUS_MODULES:
        if path.startswith(prefix) and path[len(prefix) :] in STREAM_CLASSES:
            return STREAM_CLASSES[path[len(prefix) :]]
    if path in STREAM_CLASSES:
        return STREAM_CLASSES[path]
    if "." not in path and ":" not in path:
        raise StreamConfigError(
            f"{where}.class: unknown stream class {path!r}; use one of "
            f"{', '.join(STREAM_CLASSES)} or a path such as mypackage.streams:MyStream"
        )
    return _import_class(path, where)


def _int_option(key: str, value: Any, minimum: int, where: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise StreamConfigError(f"{where}.{key}: {value!r} is not a whole number >= {minimum}")
    return number


def _bool_option(key: str, value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return parse_bool(str(value))
    except OptionError as exc:
        raise StreamConfigError(f"{where}.{key}: {exc}") from None


def _builtin_options(
    factory: Callable[..., Stream], options: dict[str, Any], where: str
) -> dict[str, Any]:
    """Convert the options a built-in class takes; drop, with a warning, the ones it ignores.

    Circus's classes swallow unknown options silently, and old configs still
    carry some (``refresh_time``), so an unknown key must not stop the watcher.
    """
    accepted = inspect.signature(factory).parameters
    converted: dict[str, Any] = {}
    for key, value in options.items():
        if key not in accepted:
            log.warning("stream_option_ignored", where=where, option=key)
        elif key in _INT_OPTIONS:
            converted[key] = _int_option(key, value, _INT_OPTIONS[key], where)
        elif key == "utc":
            converted[key] = _bool_option(key, value, where)
        else:
            converted[key] = value
    return converted


def build_stream(conf: Mapping[str, Any], *, where: str) -> Stream:
    """The stream described by one ``stdout_stream.*`` / ``stderr_stream.*`` section.

    ``class`` is a short name (FileStream …), a Circus path to one
    (``circus.stream.FileStream``) or a path to any class (``pkg.mod.Class``
    or ``pkg.mod:Class``); without it, a ``filename`` means FileStream. The
    other keys are the constructor's keyword arguments; for the built-in
    classes numbers and ``utc`` are converted from their string form, user
    classes get the strings as in Circus. ``where`` names the options in the
    config, e.g. ``"circus.ini:watcher:web:stdout_stream"``; every error
    message starts with it. Files are opened now, by the supervisor's user.
    """
    options = dict(conf)
    class_path = options.pop("class", None)
    if class_path is None:
        if "filename" not in options:
            raise StreamConfigError(
                f"{where}: a stream needs a class or a filename; "
                "add .filename = /path/to/file.log, or .class = StdoutStream"
            )
        factory: Callable[..., Stream] = FileStream
    else:
        factory = _resolve_class(str(class_path), where)
    builtin = factory in STREAM_CLASSES.values()
    if builtin:
        options = _builtin_options(factory, options, where)
    try:
        return factory(**options)
    except StreamConfigError as exc:
        raise StreamConfigError(f"{where}.{exc}") from exc
    except OSError as exc:
        if exc.filename is None:
            raise StreamConfigError(f"{where}: {class_path or 'FileStream'}: {exc}") from exc
        raise StreamConfigError(
            f"{where}.filename: cannot open {exc.filename!r}: {exc.strerror}; check that the "
            "directory exists and that the service user may write there"
        ) from exc
    except Exception as exc:  # a user class's constructor can raise anything
        raise StreamConfigError(f"{where}: {class_path or 'FileStream'}: {exc}") from exc
