"""Turn a signal as users write it (``15``, ``TERM``, ``sigterm``, ``SIGRTMIN+1``) into its number.

The accepted spellings are those of Circus's ``to_signum``,
used by the ``stop_signal`` option and by the ``signal`` control command. An
unknown name is a `SignalError` (a ValueError), never an AttributeError as in
Circus.
"""

from __future__ import annotations

import re
import signal

_OFFSET = re.compile(r"(?P<base>SIG\w+?)(?P<sign>[+-])(?P<offset>\d+)")

_NAMES = {name: int(member) for name, member in signal.Signals.__members__.items()}


class SignalError(ValueError):
    """A value that names no signal; str() says what was given and what is accepted."""


def parse_signal(value: int | str) -> int:
    """Return the signal number for ``value``.

    Accepts an int, a decimal string (``"15"``), a name with or without the
    ``SIG`` prefix in any case (``"TERM"``, ``"sigterm"``), or a real-time
    offset (``"SIGRTMIN+1"``, ``"RTMAX-2"``). The result is always a valid
    signal number (1 to NSIG - 1).
    """
    if isinstance(value, bool):
        raise SignalError(f"{value!r} is not a signal")
    if isinstance(value, int):
        return _checked(value, value)
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return _checked(int(text), value)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    offset = _OFFSET.fullmatch(name)
    if offset and offset.group("base") in _NAMES:
        delta = int(offset.group("offset"))
        base = _NAMES[offset.group("base")]
        return _checked(base + delta if offset.group("sign") == "+" else base - delta, value)
    if name in _NAMES:
        return _NAMES[name]
    raise SignalError(
        f"{value!r} is not a signal; use a number or a name such as TERM, SIGHUP or SIGRTMIN+1"
    )


def _checked(signum: int, given: int | str) -> int:
    if not 0 < signum < signal.NSIG:
        raise SignalError(f"{given!r} is not a signal number; use 1 to {signal.NSIG - 1}")
    return signum
