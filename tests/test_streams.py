"""Tests for chapiteau.supervisor.io.streams."""

from __future__ import annotations

import calendar
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from chapiteau.supervisor.children import spawn as spawn_module
from chapiteau.supervisor.io.streams import (
    Chunk,
    FancyStdoutStream,
    FileStream,
    QueueStream,
    StdoutStream,
    StreamConfigError,
    TimedRotatingFileStream,
    WatchedFileStream,
    build_stream,
    close_stream,
    format_chunk,
    next_rollover,
    reopen_stream,
)

WHERE = "circus.ini:watcher:web:stdout_stream"
# 2020-01-02 03:04:05 local time, as a chunk timestamp
STAMP = datetime(2020, 1, 2, 3, 4, 5).timestamp()


def chunk(data: bytes, pid: int = 42, **extra: float) -> Chunk:
    return {"data": data, "pid": pid, "name": "stdout", **extra}  # type: ignore[typeddict-item]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --- format -----------------------------------------------------------------------------


def test_file_stream_writes_the_data_unchanged(tmp_path: Path) -> None:
    stream = FileStream(str(tmp_path / "out.log"))
    stream(chunk(b"hello\nworld"))
    stream(chunk(b"!\n"))
    assert read(tmp_path / "out.log") == "hello\nworld!\n"


def test_time_format_prefixes_every_line_with_time_and_pid(tmp_path: Path) -> None:
    stream = FileStream(str(tmp_path / "out.log"), time_format="%Y-%m-%d %H:%M:%S")
    stream(chunk(b"a\nb\n", timestamp=STAMP))
    assert read(tmp_path / "out.log") == (
        "2020-01-02 03:04:05 [42] | a\n2020-01-02 03:04:05 [42] | b\n"
    )


def test_time_format_ends_a_chunk_with_exactly_one_newline_as_circus() -> None:
    assert format_chunk(chunk(b"partial", timestamp=STAMP), "%H") == "03 [42] | partial\n"
    assert format_chunk(chunk(b"x\n\n\n", timestamp=STAMP), "%H") == "03 [42] | x\n"


def test_time_format_prefixes_blank_lines_inside_a_chunk() -> None:
    assert format_chunk(chunk(b"x\n\ny", timestamp=STAMP), "%H") == (
        "03 [42] | x\n03 [42] | \n03 [42] | y\n"
    )


def test_time_format_uses_the_current_time_without_a_timestamp() -> None:
    before = datetime.now().strftime("%Y-%m-%d")
    line = format_chunk(chunk(b"x", pid=7), "%Y-%m-%d")
    assert line in (f"{before} [7] | x\n", f"{datetime.now():%Y-%m-%d} [7] | x\n")


def test_undecodable_bytes_are_written_as_replacement_characters(tmp_path: Path) -> None:
    stream = FileStream(str(tmp_path / "out.log"))
    stream(chunk(b"caf\xc3\xa9 \xff\xfe!"))
    assert read(tmp_path / "out.log") == "café \ufffd\ufffd!"


@given(st.binary(max_size=200))
def test_format_without_time_format_is_the_lenient_utf8_decoding(data: bytes) -> None:
    assert format_chunk(chunk(data), None) == data.decode("utf-8", "replace")


# --- FileStream ---------------------------------------------------------------------------


def test_file_stream_without_filename_writes_to_a_new_temporary_file() -> None:
    stream = FileStream()
    try:
        stream(chunk(b"kept"))
        assert Path(stream.filename).read_text() == "kept"
    finally:
        stream.close()
        os.unlink(stream.filename)


def test_file_stream_appends_to_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "out.log").write_text("old\n")
    FileStream(str(tmp_path / "out.log"))(chunk(b"new\n"))
    assert read(tmp_path / "out.log") == "old\nnew\n"


def test_file_stream_rotates_by_size_into_numbered_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = FileStream(str(path), max_bytes=10, backup_count=2)
    for text in (b"11111111\n", b"22222222\n", b"33333333\n", b"44444444\n"):
        stream(chunk(text))
    assert read(path) == "44444444\n"
    assert read(tmp_path / "out.log.1") == "33333333\n"
    assert read(tmp_path / "out.log.2") == "22222222\n"
    assert not (tmp_path / "out.log.3").exists()


def test_file_stream_rotates_when_size_plus_chunk_reaches_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = FileStream(str(path), max_bytes=10, backup_count=1)
    stream(chunk(b"12345"))
    stream(chunk(b"1234"))
    assert not (tmp_path / "out.log.1").exists()
    stream(chunk(b"x"))
    assert read(tmp_path / "out.log.1") == "123451234"
    assert read(path) == "x"


def test_file_stream_does_not_rotate_an_empty_file(tmp_path: Path) -> None:
    stream = FileStream(str(tmp_path / "out.log"), max_bytes=4, backup_count=3)
    stream(chunk(b"larger than max_bytes"))
    assert read(tmp_path / "out.log") == "larger than max_bytes"
    assert not (tmp_path / "out.log.1").exists()


def test_file_stream_without_backups_never_rotates(tmp_path: Path) -> None:
    stream = FileStream(str(tmp_path / "out.log"), max_bytes=4, backup_count=0)
    stream(chunk(b"abc"))
    stream(chunk(b"def"))
    assert read(tmp_path / "out.log") == "abcdef"
    assert sorted(os.listdir(tmp_path)) == ["out.log"]


OPEN_FILES = """
import os
for fd in os.listdir("/proc/self/fd"):
    try:
        print(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
"""


def test_file_stream_file_is_not_inherited_by_workers(tmp_path: Path) -> None:
    stream = FileStream(str(tmp_path / "out.log"))
    stream(chunk(b"open\n"))
    child_files = subprocess.run(
        [sys.executable, "-c", OPEN_FILES],
        close_fds=False,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert str(tmp_path / "out.log") not in child_files


# --- logrotate ----------------------------------------------------------------------------

FILE_STREAMS = [FileStream, WatchedFileStream, TimedRotatingFileStream]


@pytest.mark.parametrize("cls", FILE_STREAMS)
def test_write_after_logrotate_rename_goes_to_a_new_file(tmp_path: Path, cls: type) -> None:
    path = tmp_path / "out.log"
    stream = cls(str(path))
    stream(chunk(b"before\n"))
    os.rename(path, tmp_path / "out.log.1")
    stream(chunk(b"after\n"))
    assert read(tmp_path / "out.log.1") == "before\n"
    assert read(path) == "after\n"


@pytest.mark.parametrize("cls", FILE_STREAMS)
def test_write_after_logrotate_delete_recreates_the_file(tmp_path: Path, cls: type) -> None:
    path = tmp_path / "out.log"
    stream = cls(str(path))
    stream(chunk(b"before\n"))
    path.unlink()
    stream(chunk(b"after\n"))
    assert read(path) == "after\n"


def test_write_after_logrotate_create_appends_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = FileStream(str(path))
    stream(chunk(b"before\n"))
    os.rename(path, tmp_path / "out.log.1")
    path.write_text("created by logrotate\n")
    stream(chunk(b"after\n"))
    assert read(path) == "created by logrotate\nafter\n"


def test_write_after_copytruncate_continues_at_the_new_end(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = FileStream(str(path))
    stream(chunk(b"before\n"))
    os.truncate(path, 0)
    stream(chunk(b"after\n"))
    assert read(path) == "after\n"


def test_reopen_creates_the_file_again_at_once(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = FileStream(str(path))
    os.rename(path, tmp_path / "moved.log")
    stream.reopen()
    assert path.exists()


def test_write_after_close_opens_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = WatchedFileStream(str(path))
    stream(chunk(b"a"))
    stream.close()
    stream(chunk(b"b"))
    assert read(path) == "ab"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user may write to (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="chapiteau-streams-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_files_belong_to_the_user_the_supervisor_runs_as(shared_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            FileStream(str(shared_dir / "out.log"))(chunk(b"x"))
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    assert (shared_dir / "out.log").stat().st_uid == nobody.pw_uid


# --- TimedRotatingFileStream --------------------------------------------------------------


def local(*when: int) -> float:
    return datetime(*when).timestamp()  # type: ignore[arg-type]


@pytest.mark.parametrize("when", ["s", "m", "h", "d", "midnight", "Midnight", "w0", "W6"])
def test_rotate_when_accepts_any_case(tmp_path: Path, when: str) -> None:
    stream = TimedRotatingFileStream(str(tmp_path / "out.log"), rotate_when=when)
    assert stream.rotate_when == when.upper()


@pytest.mark.parametrize("when", ["X", "W7", "W", "hour", ""])
def test_rotate_when_rejects_unknown_periods(tmp_path: Path, when: str) -> None:
    with pytest.raises(StreamConfigError, match=r"^rotate_when: "):
        TimedRotatingFileStream(str(tmp_path / "out.log"), rotate_when=when)


def test_timed_rotation_names_the_backup_after_the_period_it_covers(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_text("old\n")
    last_written = local(2020, 1, 2, 3, 4, 5)
    os.utime(path, (last_written, last_written))
    stream = TimedRotatingFileStream(str(path), rotate_when="H")
    stream(chunk(b"new\n"))
    assert read(tmp_path / "out.log.2020010203") == "old\n"
    assert read(path) == "new\n"


def test_timed_rotation_keeps_only_backup_count_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    for hour in (1, 2, 3):
        (tmp_path / f"out.log.20200101{hour:02}").write_text(f"{hour}\n")
    (tmp_path / "out.log.unrelated").write_text("kept\n")
    path.write_text("old\n")
    os.utime(path, (local(2020, 1, 2, 3), local(2020, 1, 2, 3)))
    stream = TimedRotatingFileStream(str(path), rotate_when="H", backup_count=2)
    stream(chunk(b"new\n"))
    assert sorted(os.listdir(tmp_path)) == [
        "out.log",
        "out.log.2020010103",
        "out.log.2020010203",
        "out.log.unrelated",
    ]


def test_timed_rotation_waits_for_the_end_of_the_period(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = TimedRotatingFileStream(str(path), rotate_when="H")
    stream(chunk(b"a"))
    stream(chunk(b"b"))
    assert sorted(os.listdir(tmp_path)) == ["out.log"]


def test_next_rollover_adds_the_interval_for_fixed_periods() -> None:
    assert next_rollover(1_000_000, "H", 7200, utc=True) == 1_000_000 + 7200


utc_times = st.integers(min_value=0, max_value=4_000_000_000)


@given(utc_times)
def test_next_rollover_at_midnight_is_the_next_utc_midnight(now: int) -> None:
    result = next_rollover(now, "MIDNIGHT", 86400, utc=True)
    assert 0 < result - now <= 86400
    assert result % 86400 == 0


@given(utc_times, st.integers(min_value=0, max_value=6))
def test_next_weekly_rollover_is_the_midnight_ending_that_weekday(now: int, day: int) -> None:
    result = next_rollover(now, f"W{day}", 7 * 86400, utc=True)
    assert 0 < result - now <= 7 * 86400
    assert result % 86400 == 0
    assert time.gmtime(result - 1).tm_wday == day


def test_next_weekly_rollover_example() -> None:
    wednesday_noon = calendar.timegm((2024, 1, 3, 12, 0, 0))
    assert next_rollover(wednesday_noon, "W0", 7 * 86400, utc=True) == calendar.timegm(
        (2024, 1, 9, 0, 0, 0)
    )


# --- stdout -------------------------------------------------------------------------------


def test_stdout_stream_writes_the_decoded_data(capsys: pytest.CaptureFixture[str]) -> None:
    StdoutStream()(chunk(b"hi \xff\n"))
    assert capsys.readouterr().out == "hi \ufffd\n"


def test_fancy_stdout_stream_colours_and_prefixes_each_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = FancyStdoutStream(color="green", time_format="%H:%M")
    stream(chunk(b"one\n\ntwo\n", pid=7, timestamp=STAMP))
    assert capsys.readouterr().out == (
        "\033[0;32;40m03:04 [7] | one\033[0m\n\033[0;32;40m03:04 [7] | two\033[0m\n"
    )


def test_fancy_stdout_stream_default_time_format(capsys: pytest.CaptureFixture[str]) -> None:
    FancyStdoutStream(color="red")(chunk(b"x", timestamp=STAMP))
    assert capsys.readouterr().out == "\033[0;31;40m2020-01-02 03:04:05 [42] | x\033[0m\n"


def test_fancy_stdout_stream_picks_a_colour_when_none_is_given() -> None:
    assert FancyStdoutStream().color in (
        "red",
        "green",
        "yellow",
        "blue",
        "magenta",
        "cyan",
        "white",
    )


def test_fancy_stdout_stream_rejects_an_unknown_colour() -> None:
    with pytest.raises(StreamConfigError, match=r"^color: 'purple'"):
        FancyStdoutStream(color="purple")


# --- close / reopen helpers ---------------------------------------------------------------


def test_close_and_reopen_helpers_accept_plain_callables() -> None:
    received: list[Chunk] = []
    close_stream(received.append)
    reopen_stream(received.append)
    assert received == []


def test_reopen_helper_reopens_a_file_stream(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    stream = FileStream(str(path))
    path.unlink()
    reopen_stream(stream)
    assert path.exists()


# --- build_stream -------------------------------------------------------------------------


def test_build_stream_with_only_a_filename_is_a_file_stream(tmp_path: Path) -> None:
    stream = build_stream({"filename": str(tmp_path / "out.log")}, where=WHERE)
    assert type(stream) is FileStream


@pytest.mark.parametrize(
    "name",
    [
        "WatchedFileStream",
        "circus.stream.WatchedFileStream",
        "circus.stream.file_stream.WatchedFileStream",
    ],
)
def test_build_stream_knows_circus_class_names(tmp_path: Path, name: str) -> None:
    stream = build_stream({"class": name, "filename": str(tmp_path / "o.log")}, where=WHERE)
    assert type(stream) is WatchedFileStream


def test_build_stream_converts_size_options_from_strings(tmp_path: Path) -> None:
    conf = {"filename": str(tmp_path / "out.log"), "max_bytes": "10", "backup_count": " 1 "}
    stream = build_stream(conf, where=WHERE)
    stream(chunk(b"123456789"))
    stream(chunk(b"x"))
    assert read(tmp_path / "out.log.1") == "123456789"


@pytest.mark.parametrize(("word", "value"), [("false", False), ("True", True), ("0", False)])
def test_build_stream_reads_utc_as_a_boolean(tmp_path: Path, word: str, value: bool) -> None:
    conf = {"class": "TimedRotatingFileStream", "filename": str(tmp_path / "o.log"), "utc": word}
    stream = build_stream(conf, where=WHERE)
    assert isinstance(stream, TimedRotatingFileStream)
    assert stream.utc is value


@pytest.mark.parametrize(
    "path",
    ["chapiteau.supervisor.io.streams.QueueStream", "chapiteau.supervisor.io.streams:QueueStream"],
)
def test_build_stream_imports_a_dotted_class_path(path: str) -> None:
    assert type(build_stream({"class": path}, where=WHERE)) is QueueStream


def test_build_stream_passes_user_classes_the_option_strings(tmp_path: Path) -> None:
    (tmp_path / "userstreams.py").write_text(
        "class Keep:\n"
        "    def __init__(self, **options):\n"
        "        self.options = options\n"
        "    def __call__(self, chunk):\n"
        "        pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        stream = build_stream({"class": "userstreams.Keep", "max_bytes": "5"}, where=WHERE)
    finally:
        sys.path.remove(str(tmp_path))
    assert stream.options == {"max_bytes": "5"}  # type: ignore[attr-defined]


def test_build_stream_reports_an_unimportable_class() -> None:
    with pytest.raises(StreamConfigError) as info:
        build_stream({"class": "x.Y"}, where=WHERE)
    assert str(info.value) == f"{WHERE}.class: cannot import 'x.Y': No module named 'x'"


def test_build_stream_reports_a_missing_attribute() -> None:
    with pytest.raises(
        StreamConfigError, match=re.escape(f"{WHERE}.class: cannot import 'os:Nope'")
    ):
        build_stream({"class": "os:Nope"}, where=WHERE)


def test_build_stream_reports_an_unknown_short_name() -> None:
    with pytest.raises(
        StreamConfigError, match=re.escape(f"{WHERE}.class: unknown stream class 'Filestream'")
    ):
        build_stream({"class": "Filestream"}, where=WHERE)


@pytest.mark.parametrize(
    ("key", "value"), [("max_bytes", "ten"), ("backup_count", "-1"), ("rotate_interval", "0")]
)
def test_build_stream_reports_a_bad_number(tmp_path: Path, key: str, value: str) -> None:
    conf = {"class": "TimedRotatingFileStream", "filename": str(tmp_path / "o.log"), key: value}
    if key == "max_bytes":
        conf["class"] = "FileStream"
    with pytest.raises(StreamConfigError, match=re.escape(f"{WHERE}.{key}: {value!r}")):
        build_stream(conf, where=WHERE)


def test_build_stream_reports_a_bad_boolean(tmp_path: Path) -> None:
    conf = {"class": "TimedRotatingFileStream", "filename": str(tmp_path / "o.log"), "utc": "maybe"}
    with pytest.raises(StreamConfigError, match=re.escape(f"{WHERE}.utc: 'maybe'")):
        build_stream(conf, where=WHERE)


def test_build_stream_puts_the_location_before_a_constructor_error(tmp_path: Path) -> None:
    conf = {
        "class": "TimedRotatingFileStream",
        "filename": str(tmp_path / "o.log"),
        "rotate_when": "hourly",
    }
    with pytest.raises(StreamConfigError, match=re.escape(f"{WHERE}.rotate_when: 'hourly'")):
        build_stream(conf, where=WHERE)


def test_build_stream_reports_a_file_it_cannot_open(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "dir.log")
    with pytest.raises(
        StreamConfigError, match=re.escape(f"{WHERE}.filename: cannot open {missing!r}")
    ):
        build_stream({"filename": missing}, where=WHERE)


def test_build_stream_needs_a_class_or_a_filename() -> None:
    with pytest.raises(
        StreamConfigError, match=re.escape(f"{WHERE}: a stream needs a class or a filename")
    ):
        build_stream({"time_format": "%H"}, where=WHERE)


def test_build_stream_reports_a_user_class_that_rejects_its_options() -> None:
    with pytest.raises(StreamConfigError, match=re.escape(f"{WHERE}: collections:deque")):
        build_stream({"class": "collections:deque", "x": "1", "y": "2"}, where=WHERE)


def test_build_stream_ignores_unknown_options_of_builtin_classes_with_a_warning(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        stream = build_stream(
            {"filename": str(tmp_path / "o.log"), "refresh_time": "0.3"}, where=WHERE
        )
    assert type(stream) is FileStream
    assert {
        "event": "stream_option_ignored",
        "where": WHERE,
        "option": "refresh_time",
        "log_level": "warning",
    } in logs


def test_build_stream_does_not_change_the_given_options(tmp_path: Path) -> None:
    conf = {"class": "FileStream", "filename": str(tmp_path / "o.log")}
    build_stream(conf, where=WHERE)
    assert conf == {"class": "FileStream", "filename": str(tmp_path / "o.log")}


def test_loading_a_stream_class_makes_each_spawn_check_the_fds_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust = spawn_module._FdTrust()
    trust.trusted = True
    monkeypatch.setattr(spawn_module, "_FDS", trust)
    with pytest.raises(StreamConfigError):
        build_stream({"class": "os:Nope"}, where=WHERE)
    assert (trust.trusted, trust.user_code) == (False, True)
