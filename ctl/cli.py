"""chapiteauctl: send Circus control commands and print the replies as circusctl does.

Every circusctl 0.19 command, flag, output format and exit status works
the same against chapiteau or circusd, with three fixes:
``rm --nostop/--waiting`` and ``kill --waiting`` are sent (circusctl drops them),
``set NAME env KEY=VALUE[,KEY=VALUE]`` works (circusctl crashes), and an error reply
prints ``error: <reason>`` also for ``status`` and exits 3 also with ``--json``.
chapiteauctl's own additions: ``status -v``, ``tail``, ``help`` and ``completion``
(`chapiteau.ctl.tail`, `chapiteau.ctl.completion`).

It must start fast (it is typed and scripted): the module imports only the
standard library it needs at once; zmq is imported when a message is sent.

Exit status: 0 success; 3 the daemon answered with an error, or ``status -v``
found a watcher that is not active; 1 no reply in time ("Timed out."), wrong
arguments for a command (as circusctl) or a file ``tail`` cannot read; 2 a usage
error found by the option parser.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from chapiteau.ctl.client import CallError, Client, CurveClient, listen
from chapiteau.ctl.commands import CTL_COMMANDS, ArgumentError
from chapiteau.ctl.completion import SHELLS
from chapiteau.ctl.completion import script as completion_script
from chapiteau.ctl.tail import TailError, stream_file, tail
from chapiteau.protocol.constants import DEFAULT_ENDPOINT, DEFAULT_PUBSUB_ENDPOINT, VERSION

PROG = "chapiteauctl"
ENDPOINT_VARIABLE = "CIRCUSCTL_ENDPOINT"
SERVER_KEY_VARIABLE = "CHAPITEAUCTL_CURVE_SERVERKEY"
CLIENT_KEY_VARIABLE = "CHAPITEAUCTL_CURVE_CLIENTKEY"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ERROR_REPLY = 3
EXIT_NOT_RUNNING = 3
UPGRADE_CHECK_WAIT = 75.0
"""How long ``upgrade`` waits for its reply at least: the supervisor first runs the new
code on the config (``--check``), for at most 60 s."""
UPGRADE_WAIT = 30.0
"""How long ``upgrade`` then waits for the next supervisor to answer."""
UPGRADE_POLL = 0.05
"""``status -v``: some watcher is not active (as ``systemctl status``)."""

TIMEOUT_HELP = """
A time out usually happens in one of those cases:

#1 The daemon could not be reached.
#2 The daemon took too long to perform the operation

For #1, make sure you are hitting the right place
by checking your --endpoint option.

For #2, if you are not expecting a result to
come back, increase your timeout option value
(particularly with waiting switches)
"""

# -- the program -----------------------------------------------------------------------------


def global_options() -> dict[str, dict[str, Any]]:
    """The options given before the command, with argparse's keywords for each (the
    parser and the completion scripts read them here)."""
    return {
        "--curve-client-key": {
            "default": os.environ.get(CLIENT_KEY_VARIABLE),
            "help": f"this client's CURVE key pair file (.key_secret) [${CLIENT_KEY_VARIABLE}]",
        },
        "--curve-server-key": {
            "default": os.environ.get(SERVER_KEY_VARIABLE),
            "help": f"the daemon's CURVE public key (Z85) or key file [${SERVER_KEY_VARIABLE}]",
        },
        "--endpoint": {"default": None, "help": "connection endpoint"},
        "--help": {"action": "store_true", "help": "Show help and exit"},
        "--json": {"action": "store_true", "help": "output to JSON"},
        "--prettify": {"action": "store_true", "help": "prettify output"},
        "--timeout": {"type": float, "default": 5, "help": "connection timeout"},
        "--version": {
            "action": "version",
            "version": f"{PROG} {VERSION}",
            "help": "display version and exit",
        },
    }


def build_parser(commands: list[str], exit_on_error: bool = True) -> argparse.ArgumentParser:
    """circusctl's parser: global options first, then the subparsers of ``commands``.

    Only the commands named on the line get one: each subparser costs argparse
    about half a millisecond (gettext looks its strings up), every one of them
    a tenth of chapiteauctl's start.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] command [args]",
        description="Controls a chapiteau (or Circus) daemon",
        epilog="Commands:\n"
        + "\n".join(f"  {c.name:<14}{c.summary}" for c in CTL_COMMANDS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        exit_on_error=exit_on_error,
    )
    for flag, keywords in global_options().items():
        parser.add_argument(flag, **keywords)
    parser.command_parsers = {}
    if commands:
        subparsers = parser.add_subparsers(dest="command")
        for command in (CTL_COMMANDS[name] for name in commands):
            sub = subparsers.add_parser(
                command.name, usage=f"{PROG} {command.usage}", description=command.summary
            )
            parser.command_parsers[command.name] = sub
            # add's CMD keeps its own options (add web python -m http.server)
            nargs = argparse.REMAINDER if command.name == "add" else "*"
            sub.add_argument("args", nargs=nargs, help=argparse.SUPPRESS)
            for option in command.options:
                flags = [f"--{option.name}"] + ([f"-{option.short}"] if option.short else [])
                if isinstance(option.default, bool):
                    sub.add_argument(*flags, action="store_true", help=option.help)
                else:
                    sub.add_argument(*flags, default=option.default, help=option.help)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse like circusctl: subcommands exist only if a command name appears."""
    try:
        parser = build_parser([name for name in CTL_COMMANDS if name in argv], False)
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        # Say it as circusctl does, every command in the list of choices.
        parser = build_parser(list(CTL_COMMANDS))
        args, extra = parser.parse_known_args(argv)
    if not hasattr(args, "command"):
        args.command = None
    # Positionals after a command's flag (signal web 42 --children 15) belong to the command.
    if extra and (args.command is None or any(word.startswith("--") for word in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args = [*args.args, *extra]
    args.parser = parser
    return args


class Session:
    """One chapiteauctl session: global options and a client; runs commands as circusctl does."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.endpoint = args.endpoint or os.environ.get(ENDPOINT_VARIABLE) or DEFAULT_ENDPOINT
        self.curve = (
            CurveClient(args.curve_server_key, args.curve_client_key)
            if args.curve_server_key
            else None
        )
        self.client = Client(self.endpoint, args.timeout, self.curve)

    def run(self, args: argparse.Namespace) -> int:
        """Run the command in ``args``; return circusctl's exit status."""
        command = CTL_COMMANDS[args.command]
        if self.args.help:
            print(f"usage: {PROG} {command.usage}\n\n{command.summary}")
            return EXIT_OK
        opts = {option.name: getattr(args, option.name) for option in command.options}
        try:
            if command.build is None:
                return self.run_local(command.name, list(args.args), opts)
            properties = command.build(list(args.args), opts)
            reply = self.client.call(command.name, properties)
        except ArgumentError as exc:
            sys.stderr.write(f"{exc}\n")
            return EXIT_FAILURE
        except CallError as exc:
            text = str(exc)
            if "timed out" in text.lower():
                text += TIMEOUT_HELP
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
            return EXIT_FAILURE
        except (KeyboardInterrupt, TailError) as exc:
            if isinstance(exc, TailError):
                sys.stderr.write(f"error: {exc}\n")
            return EXIT_FAILURE
        failed = reply.get("status") == "error"
        ok_status = EXIT_NOT_RUNNING if command.not_running(reply) else EXIT_OK
        if self.args.json:
            if self.args.prettify:
                print(json.dumps(reply, indent=2, sort_keys=True))
            else:
                print(json.dumps(reply))
            return EXIT_ERROR_REPLY if failed else ok_status
        try:
            output = command.show(reply)
        except (KeyError, TypeError, ValueError, AttributeError):
            sys.stderr.write(f"unexpected reply for {command.name}: {json.dumps(reply)}\n")
            return EXIT_FAILURE
        if failed:
            sys.stderr.write(output + "\n")
            return EXIT_ERROR_REPLY
        print(output)
        return ok_status

    def run_local(self, name: str, words: list[str], opts: dict[str, Any]) -> int:
        """The commands chapiteauctl runs itself: listen, help, completion, tail, and
        upgrade (which waits for the next supervisor)."""
        if name == "upgrade":
            if words:
                raise ArgumentError("upgrade takes no arguments")
            return self.upgrade()
        if name == "listen":
            endpoint = self.args.endpoint or DEFAULT_PUBSUB_ENDPOINT
            return listen(endpoint, words or [""], self.curve)
        if name == "help":
            return show_help(words)
        if name == "completion":
            if len(words) != 1 or words[0] not in SHELLS:
                raise ArgumentError(f"completion takes one shell: {' or '.join(SHELLS)}")
            flags = {flag: "action" not in keywords for flag, keywords in global_options().items()}
            sys.stdout.write(completion_script(words[0], flags))
            return EXIT_OK
        if len(words) != 1 or opts["stream"] not in ("stdout", "stderr"):
            raise ArgumentError(
                "Invalid arguments: tail [-f] [-n LINES] [--stream stdout|stderr] NAME"
            )
        stream = opts["stream"]
        reply = self.client.call("get", {"name": words[0], "keys": [f"{stream}_stream_conf"]})
        if reply.get("status") == "error":
            raise TailError(str(reply.get("reason")))
        path = stream_file(words[0], stream, reply.get("options", {}))
        lines = opts["lines"]
        if not str(lines).isdigit():
            raise ArgumentError(f"-n must be a number of lines, not {lines!r}")
        return tail(path, int(lines), opts["follow"])

    def upgrade(self) -> int:
        """``upgrade``, then wait (at most UPGRADE_WAIT s) until a new supervisor answers."""
        timeout = self.client.timeout
        self.client.timeout = max(timeout, UPGRADE_CHECK_WAIT)
        try:
            reply = self.client.call("upgrade", {})
        finally:
            self.client.timeout = min(timeout, 1.0)
        if reply.get("status") != "ok":
            sys.stderr.write(f"error: {reply.get('reason')}\n")
            return EXIT_ERROR_REPLY
        old = reply.get("pid")
        deadline = time.monotonic() + UPGRADE_WAIT
        while time.monotonic() < deadline:
            try:
                info = self.client.call("dstats", {}).get("info")
            except CallError:
                info = None  # no supervisor between the two generations
            if isinstance(info, dict) and info.get("pid") not in (None, old):
                print(f"upgraded: supervisor {info['pid']} (was {old})")
                return EXIT_OK
            time.sleep(UPGRADE_POLL)
        sys.stderr.write(f"error: no new supervisor answered within {UPGRADE_WAIT:g} s\n")
        return EXIT_FAILURE

    def close(self) -> None:
        self.client.close()


def show_help(words: list[str]) -> int:
    """``help``: every command; ``help COMMAND``: its usage, summary and options."""
    if len(words) > 1 or (words and words[0] not in CTL_COMMANDS):
        raise ArgumentError(f"help takes one command of: {', '.join(sorted(CTL_COMMANDS))}")
    parser = build_parser(list(CTL_COMMANDS))
    if not words:
        parser.print_help()
    else:
        parser.command_parsers[words[0]].print_help()
    return EXIT_OK


def make_shell(session: Session) -> Any:
    """An interactive ``cmd.Cmd`` shell with one ``do_<command>`` per command."""
    import cmd
    import shlex

    def do(name: str) -> Callable[[Any, str], None]:
        def run(shell: Any, line: str) -> None:
            try:
                args = parse_args([name, *shlex.split(line)])
            except SystemExit:
                return
            except ValueError as exc:
                print(f"error: {exc}")
                return
            session.run(args)

        run.__doc__ = f"{CTL_COMMANDS[name].usage}\n{CTL_COMMANDS[name].summary}"
        return run

    methods: dict[str, Any] = {f"do_{name}": do(name) for name in CTL_COMMANDS}
    methods["do_EOF"] = lambda shell, line: True
    methods["postloop"] = lambda shell: sys.stdout.write("\n")
    shell_class = type("Shell", (cmd.Cmd,), {"prompt": f"({PROG}) ", **methods})
    return shell_class()


def main(argv: list[str] | None = None) -> int:
    """The ``chapiteauctl`` entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.command is None and args.help:
        args.parser.print_help()
        return EXIT_OK
    session = Session(args)
    try:
        if args.command is not None:
            return session.run(args)
        print(f"{PROG} {VERSION}")
        session.run(parse_args(["status"]))
        shell = make_shell(session)
        try:
            shell.cmdloop()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
        return EXIT_OK
    finally:
        session.close()
