"""chapiteauctl's commands: how each builds its request and prints the reply, as circusctl.

One `CtlCommand` per circusctl command: its usage line, its
options, a builder turning the command-line words into the request's
properties (raising ArgumentError for wrong ones) and a printer turning the
reply into circusctl's output. ``set`` values are typed with the option table
the daemon checks them against (`chapiteau.protocol.options`).
Standard library only: the CLI must start fast. Hence records are NamedTuples
(dataclasses imports inspect: about 10 ms of every command), and the option
table is imported by the two commands that need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

INFOLINE = (
    "%(pid)s  %(cmdline)s %(username)s %(nice)s %(mem_info1)s "
    "%(mem_info2)s %(cpu)s %(mem)s %(ctime)s"
)


class ArgumentError(Exception):
    """The command got arguments it cannot make a message from."""


class Option(NamedTuple):
    """A ``--name`` flag of one command; a bool default makes it a switch."""

    name: str
    default: Any
    help: str
    short: str | None = None
    """A one-letter alias (``-v``)."""


WAITING = Option("waiting", False, "wait for the real end of the operation")
MATCH = Option("match", "glob", "watcher name matching method (simple, glob or regex)")

Properties = dict[str, Any]


class CtlCommand(NamedTuple):
    """One circusctl command."""

    name: str
    usage: str
    summary: str
    build: Callable[[list[str], dict[str, Any]], Properties] | None
    """None for the commands chapiteauctl runs itself (``listen``, ``help``,
    ``completion``, ``tail``: `chapiteau.ctl.cli.Session.run_local`)."""
    show: Callable[[dict[str, Any]], str] = lambda reply: _ok_or_error(reply)
    options: tuple[Option, ...] = ()
    not_running: Callable[[dict[str, Any]], bool] = lambda reply: False
    """True when an ok reply says some watcher is not running as it should (exit status 3)."""


def _ok_or_error(reply: dict[str, Any]) -> str:
    if reply.get("status") == "ok":
        return "ok"
    return _error(reply)


def _error(reply: dict[str, Any]) -> str:
    return f"error: {reply.get('reason')}"


def _count(args: list[str], low: int, high: int | None, message: str) -> None:
    if len(args) < low or (high is not None and len(args) > high):
        raise ArgumentError(message)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(f"{what} must be an integer, not {text!r}") from None


def _build_add(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 2, None, "Invalid number of arguments")
    return {"name": args[0], "cmd": " ".join(args[1:]), "start": opts["start"]}


def _build_incr(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 1, 2, "Invalid number of arguments")
    props: Properties = {"name": args[0]}
    if len(args) > 1:
        props["nb"] = _int(args[1], "the number of processes")
    props["waiting"] = opts["waiting"]
    return props


def _show_incr(reply: dict[str, Any]) -> str:
    if reply.get("status") != "ok":
        return _error(reply)
    if "singleton" in reply:
        return "This watcher is a Singleton - not changing the number of processes"
    return str(reply.get("numprocesses", "ok"))


def _build_nothing(message: str) -> Callable[[list[str], dict[str, Any]], Properties]:
    def build(args: list[str], opts: dict[str, Any]) -> Properties:
        _count(args, 0, 0, message)
        return {}

    return build


def _build_optional_name(message: str) -> Callable[[list[str], dict[str, Any]], Properties]:
    def build(args: list[str], opts: dict[str, Any]) -> Properties:
        _count(args, 0, 1, message)
        return {"name": args[0]} if args else {}

    return build


def _info_line(info: Any) -> str:
    if not isinstance(info, dict):
        return str(info)
    info = dict(info)
    children = info.pop("children", [])
    lines = [INFOLINE % info]
    lines.extend("   " + INFOLINE % child for child in children)
    return "\n".join(lines)


def _show_dstats(reply: dict[str, Any]) -> str:
    if reply.get("status") != "ok":
        return _error(reply)
    info = dict(reply["info"])
    children = info.pop("children", [])
    lines = ["Main Process:", "    " + INFOLINE % info]
    if children:
        lines.append("Children:")
        lines.extend("    " + INFOLINE % child for child in children)
    return "\n".join(lines)


def option_text(key: str, value: Any) -> str:
    """A value as circusctl prints it: env as ``K=V,K2=V2`` (sorted), None as empty."""
    from chapiteau.protocol.options import OptionError, show, watcher_option

    try:
        return watcher_option(key).kind.to_text(value)
    except OptionError:  # a free-form key, or a [circus] one of globaloptions
        return show(value)


def _show_options(reply: dict[str, Any]) -> str:
    if reply.get("status") != "ok":
        return _error(reply)
    return "\n".join(f"{k}: {option_text(k, v)}" for k, v in reply.get("options", {}).items())


def _show_globaloptions(reply: dict[str, Any]) -> str:
    if reply.get("status") != "ok":
        return str(reply.get("reason"))
    return _show_options(reply)


def _build_get(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 2, None, "Invalid number of arguments")
    return {"name": args[0], "keys": args[1:]}


def _build_globaloptions(args: list[str], opts: dict[str, Any]) -> Properties:
    return {"option": args[0]} if args else {}


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ArgumentError(f"{what} must be a number, not {text!r}") from None


def _signal_argument(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _build_kill(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 1, 2, "Invalid number of arguments")
    props: Properties = {"name": args[0]}
    if len(args) > 1:
        props["pid"] = _int(args[1], "the pid")
    if opts["signum"] is not None:
        props["signum"] = _signal_argument(opts["signum"])
    if opts["graceful_timeout"] is not None:
        props["graceful_timeout"] = _number(opts["graceful_timeout"], "--graceful_timeout")
    props["waiting"] = opts["waiting"]
    return props


def _show_list(reply: dict[str, Any]) -> str:
    if "pids" in reply:
        return ",".join(str(pid) for pid in reply["pids"])
    if "watchers" in reply:
        return ",".join(reply["watchers"])
    if "reason" not in reply:
        return "error: Response doesn't contain 'pids' nor 'watchers'."
    return _error(reply)


def _show_listsockets(reply: dict[str, Any]) -> str:
    if "sockets" not in reply:
        return _error(reply)
    lines = []
    for sock in reply["sockets"]:
        where = sock["path"] if "path" in sock else f"{sock['host']}:{int(sock['port'])}"
        lines.append(f"{int(sock['fd'])}:socket '{sock['name']}' at {where}")
    return "\n".join(lines)


def _show_number(key: str) -> Callable[[dict[str, Any]], str]:
    def show(reply: dict[str, Any]) -> str:
        if reply.get("status") == "ok":
            return str(reply.get(key))
        return _error(reply)

    return show


def _build_options(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 1, None, "number of arguments invalid")
    return {"name": args[0]}


def _build_waiting_only(args: list[str], opts: dict[str, Any]) -> Properties:
    return {"waiting": opts["waiting"]}


def _build_reload(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 0, 1, "invalid number of arguments")
    props: Properties = {"name": args[0]} if args else {}
    props.update(
        graceful=not opts["terminate"], waiting=opts["waiting"], sequential=opts["sequential"]
    )
    return props


def _build_start(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 0, 1, "Invalid number of arguments")
    props: Properties = {"name": args[0]} if args else {}
    props.update(waiting=opts["waiting"], match=opts["match"])
    return props


def _build_stop(args: list[str], opts: dict[str, Any]) -> Properties:
    props: Properties = {"name": args[0]} if args else {}
    props.update(waiting=opts["waiting"], match=opts["match"])
    return props


def _build_rm(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 1, 1, "Invalid number of arguments")
    return {"name": args[0], "nostop": opts["nostop"], "waiting": opts["waiting"]}


def _build_set(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 3, None, "Invalid number of arguments")
    name, pairs = args[0], args[1:]
    if len(pairs) % 2:
        raise ArgumentError("List of key/values is invalid")
    options = {}
    for key, value in zip(pairs[::2], pairs[1::2], strict=True):
        options[key.lower()] = convert_option(key.lower(), value)
    props: Properties = {"name": name, "options": options}
    if opts["waiting"]:
        props["waiting"] = True
    return props


def _build_signal(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 2, 3, "Invalid number of arguments")
    props: Properties = {
        "name": args[0],
        "children": opts["children"],
        "recursive": opts["recursive"],
        "signum": args[-1],
    }
    if len(args) == 3:
        props["pid"] = _int(args[1], "the pid")
    return props


def _build_stats(args: list[str], opts: dict[str, Any]) -> Properties:
    _count(args, 0, 2, "message invalid")
    props: Properties = {}
    if args:
        props["name"] = args[0]
    if len(args) == 2:
        props["process"] = _int(args[1], "the pid")
    props["extended"] = opts["extended"]
    return props


def _show_stats(reply: dict[str, Any]) -> str:
    if reply.get("status") != "ok":
        return _error(reply)
    if "name" in reply:
        lines = [f"{reply['name']}:"]
        lines.extend(f"{pid}: {_info_line(info)}" for pid, info in reply.get("info", {}).items())
        return "\n".join(lines)
    if "infos" in reply:
        lines = []
        for watcher, infos in reply["infos"].items():
            lines.append(f"{watcher}:")
            lines.extend(f"{pid}: {_info_line(info)}" for pid, info in (infos or {}).items())
        return "\n".join(lines)
    return f"{reply['process']}: {_info_line(reply['info'])}\n"


def _build_status(args: list[str], opts: dict[str, Any]) -> Properties:
    props = _build_optional_name("message invalid")(args, opts)
    if opts["verbose"]:
        props["verbose"] = True
    return props


def _states(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The verbose states by watcher name, from a reply with or without ``name``."""
    if "states" in reply:
        return dict(reply["states"])
    return {str(reply.get("name", "")): reply["state"]}


def _status_not_running(reply: dict[str, Any]) -> bool:
    """``status -v``: some watcher is not ``active`` (stopped, failed, backing off, ...)."""
    if "states" not in reply and "state" not in reply:
        return False
    return any(state["state"] != "active" for state in _states(reply).values())


def _utc(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = int(value)
    days, rest = divmod(value, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


def _exit_text(last_exit: dict[str, Any] | None) -> str:
    if not last_exit:
        return "-"
    code = last_exit.get("code")
    if code is None:
        status = "exit ?"
    elif code < 0:
        status = f"killed by signal {-code}"
    else:
        status = f"exit {code}"
    return f"{status} ({last_exit.get('reason')})"


def _phase_line(name: str, state: dict[str, Any]) -> str:
    phase = str(state["state"])
    words = phase.replace("_", " ")
    details = []
    if phase == "backing_off":
        when = _utc(state["retry_at"]) if "retry_at" in state else "?"
        details.append(f"next attempt {when}, in {state.get('retry_in', 0):.1f} s")
        details.append(f"{state.get('failed_rounds', 0)} failed rounds")
    if state.get("reason"):
        details.append(str(state["reason"]))
    return f"{name}: {words}" + (f" ({'; '.join(details)})" if details else "")


PROCESS_COLUMNS = ("WID", "PID", "STATE", "UPTIME", "RESTARTS", "LAST EXIT", "READY", "STATUS")


def _one_line(text: str | None) -> str:
    """A worker's STATUS= text in a table cell: printable, on one line."""
    if text is None:
        return ""
    return "".join(char if char.isprintable() else " " for char in text)


def _show_status_verbose(reply: dict[str, Any]) -> str:
    lines = []
    for name, state in sorted(_states(reply).items()):
        lines.append(_phase_line(name, state))
        rows = [
            (
                str(p["wid"]),
                "-" if p.get("pid") is None else str(p["pid"]),
                str(p["state"]).replace("_", " "),
                _seconds(p.get("uptime")),
                str(p.get("restarts", 0)),
                _exit_text(p.get("last_exit")),
                "-" if p.get("ready") is None else ("yes" if p["ready"] else "no"),
                _one_line(p.get("status")),
            )
            for p in state.get("processes", [])
        ]
        if rows:
            widths = [max(len(r[i]) for r in (PROCESS_COLUMNS, *rows)) for i in range(8)]
            for row in (PROCESS_COLUMNS, *rows):
                lines.append(
                    "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                )
    return "\n".join(lines)


def _show_status(reply: dict[str, Any]) -> str:
    if reply.get("status") != "error" and ("states" in reply or "state" in reply):
        return _show_status_verbose(reply)
    if "statuses" in reply:
        statuses = reply["statuses"]
        return "\n".join(f"{name}: {statuses[name]}" for name in sorted(statuses))
    if reply.get("status") not in (None, "error"):
        return str(reply["status"])
    return _error(reply)


NO_NAME_COMMANDS = frozenset(
    {
        "add",
        "dstats",
        "globaloptions",
        "listen",
        "listsockets",
        "numwatchers",
        "quit",
        "reloadconfig",
        "upgrade",
    }
)
"""Commands whose first argument is not an existing watcher's name (completion)."""

CTL_COMMANDS: dict[str, CtlCommand] = {
    command.name: command
    for command in (
        CtlCommand(
            "add",
            "add [--start] NAME CMD...",
            "Add a watcher",
            _build_add,
            options=(Option("start", False, "start the watcher immediately"),),
        ),
        CtlCommand(
            "decr",
            "decr NAME [NB] [--waiting]",
            "Decrement the number of processes in a watcher",
            _build_incr,
            _show_incr,
            (WAITING,),
        ),
        CtlCommand(
            "dstats",
            "dstats",
            "Get the daemon's own stats",
            _build_nothing("Invalid message"),
            _show_dstats,
        ),
        CtlCommand(
            "get", "get NAME KEY...", "Get the value of watcher options", _build_get, _show_options
        ),
        CtlCommand(
            "globaloptions",
            "globaloptions [KEY]",
            "Get the daemon's options",
            _build_globaloptions,
            _show_globaloptions,
        ),
        CtlCommand(
            "incr",
            "incr NAME [NB] [--waiting]",
            "Increment the number of processes in a watcher",
            _build_incr,
            _show_incr,
            (WAITING,),
        ),
        CtlCommand(
            "kill",
            "kill NAME [PID] [--signum S] [--graceful_timeout T] [--waiting]",
            "Kill a watcher's processes (or one of them)",
            _build_kill,
            options=(
                WAITING,
                Option("signum", None, "overrides the watcher's stop_signal (number or name)"),
                Option("graceful_timeout", None, "overrides the watcher's graceful_timeout"),
            ),
        ),
        CtlCommand(
            "list",
            "list [NAME]",
            "Get the list of watchers, or of a watcher's pids",
            _build_optional_name("Invalid number of arguments"),
            _show_list,
        ),
        CtlCommand("listen", "listen [TOPIC...]", "Print the daemon's events", None),
        CtlCommand("help", "help [COMMAND]", "Show the commands, or one command's help", None),
        CtlCommand(
            "completion",
            "completion bash|zsh",
            "Print a shell completion script (eval it, or save it where the shell loads it)",
            None,
        ),
        CtlCommand(
            "tail",
            "tail [-f] [-n LINES] [--stream stdout|stderr] NAME",
            "Print the end of a watcher's output file, and follow it with -f",
            None,
            options=(
                Option("follow", False, "print new lines as they are written", "f"),
                Option("lines", "10", "how many lines to print first", "n"),
                Option("stream", "stdout", "stdout or stderr"),
            ),
        ),
        CtlCommand(
            "listsockets",
            "listsockets",
            "Get the list of sockets",
            lambda a, o: {},
            _show_listsockets,
        ),
        CtlCommand(
            "numprocesses",
            "numprocesses [NAME]",
            "Get the number of processes",
            _build_optional_name("message invalid"),
            _show_number("numprocesses"),
        ),
        CtlCommand(
            "numwatchers",
            "numwatchers",
            "Get the number of watchers",
            _build_nothing("Invalid number of arguments"),
            _show_number("numwatchers"),
        ),
        CtlCommand(
            "options", "options NAME", "Get a watcher's options", _build_options, _show_options
        ),
        CtlCommand(
            "quit",
            "quit [--waiting]",
            "Quit the daemon immediately",
            _build_waiting_only,
            options=(WAITING,),
        ),
        CtlCommand(
            "reload",
            "reload [NAME] [--waiting] [--sequential] [--terminate]",
            "Reload the daemon or a watcher",
            _build_reload,
            options=(
                WAITING,
                Option("sequential", False, "sequential reload"),
                Option("terminate", False, "stop immediately"),
            ),
        ),
        CtlCommand(
            "upgrade",
            "upgrade",
            "Run the installed supervisor code, keeping every worker (same pids)",
            None,
        ),
        CtlCommand(
            "reloadconfig",
            "reloadconfig [--waiting]",
            "Reload the configuration file",
            _build_waiting_only,
            options=(WAITING,),
        ),
        CtlCommand(
            "restart",
            "restart [NAME] [--waiting] [--match simple|glob|regex]",
            "Restart the daemon's watchers or one watcher",
            _build_start,
            options=(WAITING, MATCH),
        ),
        CtlCommand(
            "rm",
            "rm NAME [--nostop] [--waiting]",
            "Remove a watcher",
            _build_rm,
            options=(WAITING, Option("nostop", False, "do not stop the watcher's processes")),
        ),
        CtlCommand(
            "set",
            "set NAME KEY VALUE [KEY VALUE...] [--waiting]",
            "Set a watcher option",
            _build_set,
            options=(WAITING,),
        ),
        CtlCommand(
            "signal",
            "signal NAME [PID] [--children] [--recursive] SIGNUM",
            "Send a signal",
            _build_signal,
            options=(
                Option("children", False, "only signal the children of the process"),
                Option("recursive", False, "signal the process and its children"),
            ),
        ),
        CtlCommand(
            "start",
            "start [NAME] [--waiting] [--match simple|glob|regex]",
            "Start the daemon's watchers or one watcher",
            _build_start,
            options=(WAITING, MATCH),
        ),
        CtlCommand(
            "stats",
            "stats [--extended] [NAME] [PID]",
            "Get process infos",
            _build_stats,
            _show_stats,
            (Option("extended", False, "include info from the extended_stats hook"),),
        ),
        CtlCommand(
            "status",
            "status [-v] [NAME]",
            "Get the status of a watcher or of all watchers",
            _build_status,
            _show_status,
            (Option("verbose", False, "each watcher's phase and processes", "v"),),
            _status_not_running,
        ),
        CtlCommand(
            "stop",
            "stop [NAME] [--waiting] [--match simple|glob|regex]",
            "Stop watchers",
            _build_stop,
            options=(WAITING, MATCH),
        ),
    )
}


# -- set: option values typed as the daemon expects them -------------------------------------


def convert_option(key: str, value: str) -> Any:
    """``set``'s VALUE as the JSON value the daemon takes (circusctl's ``convert_option``),
    typed by the option table."""
    from chapiteau.protocol.options import OptionError, UnknownOption, settable_option

    try:
        return settable_option(key).kind.from_word(value)
    except UnknownOption as exc:
        raise ArgumentError(str(exc)) from None
    except OptionError as exc:
        raise ArgumentError(f"{key}: {exc}") from None
