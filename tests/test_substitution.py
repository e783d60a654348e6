"""Tests for chapiteau.supervisor.substitution, the spawn-time argv builder."""

from __future__ import annotations

import shlex

import pytest

from chapiteau.supervisor import substitution
from chapiteau.supervisor.config import WatcherConfig
from chapiteau.supervisor.substitution import format_args, program, substitute


def make(cmd: str, **fields: object) -> WatcherConfig:
    return WatcherConfig(name="web", cmd=cmd, **fields)  # type: ignore[arg-type]


def test_wid_is_substituted_in_both_spellings() -> None:
    assert format_args(make("run $(circus.wid) ((circus.WID))"), 3, {}) == ["run", "3", "3"]


def test_a_plain_command_gathers_no_variables_at_each_spawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def variables(*args: object) -> dict[str, object]:
        raise AssertionError("variables gathered for a command with none to expand")

    monkeypatch.setattr(substitution, "variables", variables)
    assert format_args(make("sleep 100 (1)", args="-x"), 1, {}) == ["sleep", "100", "(1)", "-x"]


def test_a_command_is_split_once_not_at_each_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    splits: list[str] = []
    split = shlex.split
    monkeypatch.setattr(shlex, "split", lambda value: splits.append(value) or split(value))
    # Words no other test uses: none of them was split before this test.
    for wid in (1, 2, 3):
        argv = format_args(make("sleep 100 split-once", args="--once"), wid, {})
        assert argv == ["sleep", "100", "split-once", "--once"]
    assert sorted(splits) == ["--once", "sleep 100 split-once"]


def test_legacy_dollar_wid_is_substituted() -> None:
    assert format_args(make("run --id=$WID"), 2, {}) == ["run", "--id=2"]


def test_dollar_wid_prefix_of_a_longer_name_is_left_alone() -> None:
    assert format_args(make("run $WIDTH"), 2, {}) == ["run", "$WIDTH"]


def test_socket_reference_becomes_its_fd_number() -> None:
    watcher = make("serve --fd $(circus.sockets.Web)", sockets=("web",))
    assert format_args(watcher, 1, {"web": 5}) == ["serve", "--fd", "5"]


def test_env_reference_uses_the_watcher_env() -> None:
    watcher = make("run $(circus.env.app)", env={"APP": "shop"})
    assert format_args(watcher, 1, {}) == ["run", "shop"]


def test_watcher_options_are_available() -> None:
    watcher = make("run -n $(circus.numprocesses) -t ((circus.graceful_timeout))", numprocesses=4)
    assert format_args(watcher, 1, {}) == ["run", "-n", "4", "-t", "30.0"]


def test_free_form_options_are_available() -> None:
    watcher = make("run $(circus.flapping.window)", options={"flapping.window": "10"})
    assert format_args(watcher, 1, {}) == ["run", "10"]


def test_unknown_keys_are_left_verbatim() -> None:
    assert substitute("$(circus.nope) ((circus.sockets.x))", make("x"), 1, {}) == (
        "$(circus.nope) ((circus.sockets.x))"
    )


def test_args_are_split_after_substitution_and_appended() -> None:
    watcher = make("run 'a b'", args="--name '$(circus.env.n)'\n--x", env={"N": "one two"})
    assert format_args(watcher, 1, {}) == ["run", "a b", "--name", "one two", "--x"]


def test_shell_mode_joins_with_quoting_and_appends_shell_args() -> None:
    watcher = make("echo 'a b' $(circus.wid)", shell=True, shell_args="x $(circus.wid)")
    assert format_args(watcher, 7, {}) == ["/bin/sh", "-c", "echo 'a b' 7", "x", "7"]


def test_shell_mode_uses_executable_as_the_shell() -> None:
    watcher = make("echo hi", shell=True, executable="/bin/bash")
    assert format_args(watcher, 1, {})[:2] == ["/bin/bash", "-c"]


def test_shell_args_are_ignored_without_shell() -> None:
    assert format_args(make("run", shell_args="x"), 1, {}) == ["run"]


def test_unbalanced_quotes_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        format_args(make("run 'oops"), 1, {})


def test_program_is_executable_when_set() -> None:
    watcher = make("myname --flag", executable="/usr/bin/python3")
    argv = format_args(watcher, 1, {})
    assert (program(watcher, argv), argv[0]) == ("/usr/bin/python3", "myname")


def test_program_is_the_shell_in_shell_mode() -> None:
    watcher = make("echo hi", shell=True)
    assert program(watcher, format_args(watcher, 1, {})) == "/bin/sh"
