"""The option table: the INI loader, ``add``/``set``/``get``/``options`` and chapiteauctl agree.

Walks `chapiteau.protocol.options.WATCHER_OPTIONS`: for every option, a configuration
file takes a valid value and refuses an invalid one with a ``file:section:key: message``
line; ``set`` takes and refuses the same values (its error names the option); ``options``
shows what the table says it shows; chapiteauctl types the value ``set`` takes.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chapiteau.ctl.commands import ArgumentError, convert_option, option_text
from chapiteau.protocol.ini import ConfigError
from chapiteau.protocol.options import (
    BOOL,
    FLOAT,
    INT,
    INT_OR_FLOAT,
    OCTAL,
    SIGNAL,
    SOCKET_PROTOCOL,
    USER,
    WATCHER_OPTIONS,
    Option,
    parse_bool,
    parse_hook,
)
from chapiteau.supervisor.commands.base import CommandError
from chapiteau.supervisor.commands.options import apply_options, options_of, parse_options
from chapiteau.supervisor.config import WatcherConfig, load_config


@dataclass(frozen=True)
class Sample:
    """Values of one kind: ``word`` for a file and chapiteauctl, ``json`` for set."""

    word: str
    bad_word: str | None
    """None: the kind takes any word (a string)."""
    json: Any
    bad_json: Any


SAMPLES = {
    "int": Sample("3", "many", 3, "3"),
    "float": Sample("2.5", "soon", 2.5, "2.5"),
    "int or float": Sample("2", "soon", 2, "2"),
    "bool": Sample("yes", "maybe", True, "yes"),
    "str": Sample("/tmp", None, "/tmp", 3),
    "user": Sample("0", "no-such-user-here", 0, True),
    "signal": Sample("INT", "SIGNOPE", "INT", 2.5),
    "args": Sample("--verbose", None, ["a", "b c"], 3),
    "env": Sample("A=1", "NOEQUALS", {"A": "1"}, {"A": 1}),
    "hooks": Sample("before_start:mod.fn", "nohook:x.y", {"before_start": "mod.fn"}, {"no": "x"}),
    "hook": Sample("mod.fn, true", "mod.fn, perhaps", "mod.fn, true", 3),
    "rlimit": Sample("1024", "lots", 1024, "1024"),
    "stream": Sample('{"class": "StdoutStream"}', "nojson", {"class": "StdoutStream"}, {}),
    "stream option": Sample("/tmp/x.log", None, "/tmp/x.log", [1]),
    "octal": Sample("022", "9", 0o22, "022"),
    "socket protocol": Sample("circus", "inetd", "circus", 3),
    "readiness": Sample("notify", "soon", "notify", 3),
    "names": Sample("s", None, "s", 3),
}

MEMBER = {
    "hooks.": "hooks.before_start",
    "rlimit_": "rlimit_nofile",
    "stdout_stream.": "stdout_stream.filename",
    "stderr_stream.": "stderr_stream.filename",
}
"""The key a test writes for each family of options."""

NEEDS = {"copy_path": "copy_env = true", "virtualenv": "copy_env = true"}
"""What an option needs beside it in the section."""

IN_FILE = [o for o in sorted(WATCHER_OPTIONS.values(), key=lambda o: o.name) if o.in_file]
IN_FILE.remove(WATCHER_OPTIONS["env"])  # read, and ignored with a warning, as in Circus
FIELDS = {field.name for field in dataclasses.fields(WatcherConfig)}

PLAIN_KINDS = (INT, FLOAT, INT_OR_FLOAT, BOOL, SIGNAL, OCTAL, SOCKET_PROTOCOL)
"""Kinds whose parsed value is the field's value as it is."""

OPTIONS = sorted(WATCHER_OPTIONS.values(), key=lambda option: option.name)


def key_of(option: Option) -> str:
    return MEMBER.get(option.name, option.name)


def word_of(option: Option, tmp_path: Path) -> str:
    if option.name == "stdin_socket":
        return "s"
    if option.name == "virtualenv":  # a virtualenv that exists
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        (tmp_path / "venv" / "lib" / f"python{version}" / "site-packages").mkdir(parents=True)
        return str(tmp_path / "venv")
    return SAMPLES[option.kind.name].word


def write(tmp_path: Path, key: str, word: str) -> Path:
    path = tmp_path / "circus.ini"
    need = NEEDS.get(key, "")
    path.write_text(f"[socket:s]\nport = 0\n[watcher:w]\ncmd = x\n{need}\n{key} = {word}\n")
    return path


def test_every_kind_of_the_table_has_samples() -> None:
    assert {option.kind.name for option in OPTIONS} <= set(SAMPLES)


@pytest.mark.parametrize("option", IN_FILE, ids=lambda o: o.name)
def test_a_file_takes_a_valid_value(tmp_path: Path, option: Option) -> None:
    key, word = key_of(option), word_of(option, tmp_path)
    config = load_config(write(tmp_path, key, word), {})
    assert not [warning for warning in config.warnings if "unknown key" in warning]
    if option.kind in PLAIN_KINDS and option.name in FIELDS:
        assert getattr(config.watchers[0], option.name) == option.parse_text(word)


@pytest.mark.parametrize(
    "option",
    [o for o in IN_FILE if SAMPLES[o.kind.name].bad_word is not None],
    ids=lambda o: o.name,
)
def test_a_file_refuses_an_invalid_value_in_one_line_naming_file_section_and_key(
    tmp_path: Path, option: Option
) -> None:
    key = key_of(option)
    path = write(tmp_path, key, SAMPLES[option.kind.name].bad_word)
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    message = str(raised.value)
    assert message.startswith(f"{path}:watcher:w:{key}: ") and "\n" not in message


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.settable], ids=lambda o: o.name)
def test_set_takes_what_chapiteauctl_sends_and_options_shows_it(option: Option) -> None:
    key = key_of(option)
    sent = convert_option(key, SAMPLES[option.kind.name].word)
    new = apply_options(WatcherConfig("w", "x"), parse_options({key: sent}), set())
    shown = options_of(SimpleNamespace(config=new))  # type: ignore[arg-type]
    if option.shown_as is not None:
        assert option.shown_as in shown
        option_text(option.shown_as, shown[option.shown_as])
    if option.kind in PLAIN_KINDS and option.name in FIELDS:
        assert getattr(new, option.name) == option.parse_json(key, sent)


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.settable], ids=lambda o: o.name)
def test_set_refuses_an_invalid_value_in_one_line_naming_the_option(option: Option) -> None:
    key = key_of(option)
    with pytest.raises(CommandError) as raised:
        parse_options({key: SAMPLES[option.kind.name].bad_json})
    message = str(raised.value)
    assert key in message or option.name.rstrip("._") in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "option",
    [
        o
        for o in OPTIONS
        if o.settable and SAMPLES[o.kind.name].bad_word is not None and o.kind is not USER
    ],
    ids=lambda o: o.name,
)
def test_chapiteauctl_refuses_what_the_daemon_would(option: Option) -> None:
    """But user names: they are the daemon's machine's."""
    key = key_of(option)
    with pytest.raises(ArgumentError) as raised:
        convert_option(key, SAMPLES[option.kind.name].bad_word)
    assert str(raised.value).startswith(f"{key}: ")


@pytest.mark.parametrize("option", [o for o in OPTIONS if not o.settable], ids=lambda o: o.name)
def test_an_option_set_cannot_change_is_unknown_to_set_and_chapiteauctl(option: Option) -> None:
    key = key_of(option)
    with pytest.raises(CommandError, match=f"unknown key '{key}'"):
        parse_options({key: SAMPLES[option.kind.name].json})
    with pytest.raises(ArgumentError, match=f"unknown key '{key}'"):
        convert_option(key, SAMPLES[option.kind.name].word)


def test_options_shows_every_shown_option_of_a_default_watcher() -> None:
    shown = options_of(SimpleNamespace(config=WatcherConfig("w", "x")))  # type: ignore[arg-type]
    expected = {o.shown_as for o in OPTIONS if o.shown_as is not None and not o.extension}
    assert set(shown) == expected


def test_options_shows_an_extension_only_when_it_is_not_its_default() -> None:
    config = WatcherConfig("w", "x", readiness="notify")
    shown = options_of(SimpleNamespace(config=config))  # type: ignore[arg-type]
    assert shown["readiness"] == "notify"
    assert "ready_timeout" not in shown and "numprocesses" in shown
    every = options_of(SimpleNamespace(config=config), every=True)  # type: ignore[arg-type]
    assert every["ready_timeout"] == 90


@pytest.mark.parametrize("word", ["yes", "TRUE", "On", "1", " no ", "false", "OFF", "0"])
def test_one_set_of_boolean_words(word: str) -> None:
    assert parse_bool(word) is (word.strip().lower() in ("yes", "true", "on", "1"))


@pytest.mark.parametrize("word", ["y", "n", "", "maybe"])
def test_other_words_are_not_booleans(word: str) -> None:
    with pytest.raises(ValueError, match="is not a boolean; use true or false"):
        parse_bool(word)


@pytest.mark.parametrize(
    ("value", "hook"),
    [("a.b", ("a.b", False)), (" a.b , true", ("a.b", True)), ("a.b,no", ("a.b", False)),
     (["a.b", True], ("a.b", True))],
)  # fmt: skip
def test_a_hook_is_a_path_and_an_ignore_failure_flag(value: Any, hook: tuple[str, bool]) -> None:
    assert parse_hook(value) == hook


def test_a_hook_flag_that_is_no_boolean_is_refused_by_file_and_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'perhaps' is not a boolean"):
        load_config(write(tmp_path, "hooks.after_start", "a.b, perhaps"), {})
    with pytest.raises(CommandError, match=r"hooks\.after_start: 'y' is not a boolean"):
        parse_options({"hooks.after_start": "a.b, y"})


@pytest.mark.parametrize("name", [n for n in dir(resource) if n.startswith("RLIMIT_")])
def test_every_resource_of_setrlimit_is_an_rlimit_option(tmp_path: Path, name: str) -> None:
    short = name[len("RLIMIT_") :].lower()
    config = load_config(write(tmp_path, f"rlimit_{short}", "10"), {})
    assert config.watchers[0].rlimits == {short: 10}
    assert parse_options({f"rlimit_{short.upper()}": 10}) == {f"rlimit_{short.upper()}": 10}


def test_an_rlimit_of_no_resource_is_refused_by_file_and_set(tmp_path: Path) -> None:
    problem = r"'lots' is not a resource limit \(see setrlimit\(2\)\)"
    with pytest.raises(ConfigError, match=rf"watcher:w:rlimit_lots: {problem}"):
        load_config(write(tmp_path, "rlimit_lots", "10"), {})
    with pytest.raises(CommandError, match=problem):
        parse_options({"rlimit_LOTS": 10})
