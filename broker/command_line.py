"""The ``chapiteau`` command line: its options, its help, and reading them (with getopt).

getopt, not argparse: the broker keeps every module it imports for as long as
it holds the sockets, and argparse (with the warnings, gettext and locale it
loads) would be 0.45 MiB of it, for what runs once at start-up. The options
are declared once, in `OPTIONS`, which both the parsing and ``--help`` read.
Mistakes are reported as argparse would: the usage line, then
``chapiteau: error: ...``, exit status 2.
"""

from __future__ import annotations

import getopt
import math
import sys

from chapiteau.broker.startup import START_TIMEOUT, STILL_STARTING
from chapiteau.protocol.constants import VERSION
from chapiteau.protocol.ini import LOG_LEVELS
from chapiteau.protocol.log_lines import LOG_FORMATS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

DESCRIPTION = (
    "Bind the sockets of a Circus-style config as root, then run its watchers under "
    "an unprivileged supervisor."
)
OPTIONS = {
    "log-level": ("LEVEL", f"{', '.join(LOG_LEVELS)} (default: [circus] loglevel, or info)"),
    "log-format": ("FORMAT", f"{' or '.join(LOG_FORMATS)} (default: {LOG_FORMATS[0]})"),
    "log-output": (
        "FILE",
        "append all logs (broker, supervisor, workers) to this file; USR1 reopens it",
    ),
    "daemon": (
        None,
        "detach and run in the background (needs --log-output); returns once the service "
        "runs, or with the error",
    ),
    "start-timeout": (
        "SECONDS",
        f"with --daemon: return (status {STILL_STARTING}) when the service is not running "
        f"after this long, leaving the daemon to go on starting; 0 waits for ever "
        f"(default: {START_TIMEOUT:g})",
    ),
    "pidfile": ("FILE", "write the broker's pid here (signal this process)"),
    "check-config": (
        None,
        "report mistakes in the config and unsafe paths, then exit (0: none); binds and "
        "starts nothing",
    ),
    "version": (None, "print the version and exit"),
    "help": (None, "print this help and exit"),
}
"""Each ``--option``: the kind of value it takes (None: none), and what it does."""
USAGE = "usage: chapiteau [options] config"
HELP_WIDTH = 78


class CommandLine:
    """What the command line asks for; ``main`` fills in the config's defaults."""

    __slots__ = (
        "check_config",
        "config",
        "daemon",
        "log_format",
        "log_level",
        "log_output",
        "pidfile",
        "start_timeout",
    )

    def __init__(self, config: str, given: dict[str, str]) -> None:
        self.config = config
        self.log_level: str | None = given.get("log-level")
        self.log_format: str = given.get("log-format", LOG_FORMATS[0])
        self.log_output: str | None = given.get("log-output")
        self.daemon = "daemon" in given
        self.pidfile: str | None = given.get("pidfile")
        self.start_timeout = float(given.get("start-timeout", START_TIMEOUT))
        self.check_config = "check-config" in given


def help_text() -> str:
    """What ``--help`` prints."""
    # Here only: --help exits right after, so the broker never keeps textwrap.
    import textwrap

    lines = [USAGE, "", *textwrap.wrap(DESCRIPTION, HELP_WIDTH), ""]
    lines += ["arguments:", "  config  the INI configuration file (Circus format)", "", "options:"]
    for name, (value, what) in OPTIONS.items():
        short = "-h, " if name == "help" else ""
        lines.append(f"  {short}--{name}" + (f" {value}" if value else ""))
        lines += textwrap.wrap(what, HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> CommandLine:
    """Read ``argv`` (default: this process's); print the help or version and exit when asked.

    A mistake prints the usage and the error to stderr and exits with status 2.
    """
    long_options = [name + ("=" if value else "") for name, (value, _) in OPTIONS.items()]
    try:
        pairs, words = getopt.gnu_getopt(sys.argv[1:] if argv is None else argv, "h", long_options)
    except getopt.GetoptError as exc:
        _usage_error(str(exc))
    given = {("help" if option == "-h" else option[2:]): value for option, value in pairs}
    if "help" in given:
        print(help_text())
        sys.exit(0)
    if "version" in given:
        print(f"chapiteau {VERSION}")
        sys.exit(0)
    if "log-level" in given:
        given["log-level"] = _choice("log-level", given["log-level"].lower(), LOG_LEVELS)
    if "log-format" in given:
        _choice("log-format", given["log-format"], LOG_FORMATS)
    if "start-timeout" in given:
        _start_timeout(given)
    if len(words) != 1:
        _usage_error("give one config file" if not words else f"unexpected {words[1]!r}")
    return CommandLine(words[0], given)


def _choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        _usage_error(f"--{option} {value!r}: choose {', '.join(choices)}")
    return value


def _start_timeout(given: dict[str, str]) -> None:
    value = given["start-timeout"]
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        _usage_error(f"--start-timeout {value!r}: give a number of seconds >= 0")
    if "daemon" not in given:
        _usage_error(
            "--start-timeout goes with --daemon: in the foreground, chapiteau runs until stopped"
        )


def _usage_error(message: str) -> NoReturn:
    print(f"{USAGE}\nchapiteau: error: {message}", file=sys.stderr)
    sys.exit(2)
