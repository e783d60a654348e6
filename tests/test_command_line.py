"""broker/command_line.py: the chapiteau command line, its help and its mistakes."""

from __future__ import annotations

import pytest

from chapiteau.broker.command_line import OPTIONS, help_text, parse_args
from chapiteau.broker.startup import START_TIMEOUT
from chapiteau.protocol.constants import VERSION


def test_every_option_is_read():
    args = parse_args(
        [
            "--log-level=DEBUG",
            "--log-format",
            "json",
            "--log-output",
            "/var/log/chapiteau.log",
            "--daemon",
            "--pidfile",
            "/run/chapiteau.pid",
            "--start-timeout",
            "2.5",
            "--check-config",
            "circus.ini",
        ]
    )
    assert (args.config, args.log_level, args.log_format, args.log_output) == (
        "circus.ini",
        "debug",
        "json",
        "/var/log/chapiteau.log",
    )
    assert (args.daemon, args.pidfile, args.check_config) == (True, "/run/chapiteau.pid", True)
    assert args.start_timeout == 2.5


def test_what_is_not_given_is_left_to_the_config():
    args = parse_args(["circus.ini"])
    assert (args.log_level, args.log_format, args.log_output, args.pidfile) == (
        None,
        "console",
        None,
        None,
    )
    assert not args.daemon and not args.check_config
    assert args.start_timeout == START_TIMEOUT == 90


def test_options_may_follow_the_config_and_be_abbreviated():
    args = parse_args(["circus.ini", "--log-f", "json"])
    assert (args.config, args.log_format) == ("circus.ini", "json")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--log-level", "loud", "circus.ini"], "--log-level 'loud': choose critical, error"),
        (["--log-format", "xml", "circus.ini"], "--log-format 'xml': choose console, json"),
        (["--verbose", "circus.ini"], "option --verbose not recognized"),
        (["--daemon=yes", "circus.ini"], "option --daemon must not have an argument"),
        (["circus.ini", "--pidfile"], "option --pidfile requires argument"),
        (["--daemon", "--start-timeout", "soon", "circus.ini"], "--start-timeout 'soon': give"),
        (["--daemon", "--start-timeout", "-1", "circus.ini"], "--start-timeout '-1': give"),
        (["--daemon", "--start-timeout", "inf", "circus.ini"], "--start-timeout 'inf': give"),
        (["--start-timeout", "5", "circus.ini"], "--start-timeout goes with --daemon"),
        ([], "give one config file"),
        (["a.ini", "b.ini"], "unexpected 'b.ini'"),
    ],
)
def test_a_mistake_prints_the_usage_and_exits_with_status_2(capsys, argv, error):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    usage, message = capsys.readouterr().err.splitlines()
    assert usage == "usage: chapiteau [options] config"
    assert message.startswith(f"chapiteau: error: {error}")


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["-h"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert printed == help_text() + "\n"
    assert all(f"--{name}" in printed for name in OPTIONS)
    assert max(len(line) for line in printed.splitlines()) <= 78


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"chapiteau {VERSION}\n"
