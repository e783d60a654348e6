"""Parsers of configuration words: booleans, integers, numbers, octal modes.

What every section's keys are read with, the broker's ``[socket:*]`` and
``[broker]`` included, apart from the table of watcher options
(protocol/options.py), which the broker never needs. A parser raises
`OptionError` with a message that does not say where the value came from: the
caller adds the file, section and key (or the command and property). Pure:
no I/O, standard library only.
"""

from __future__ import annotations

import math

TRUE_WORDS = frozenset({"yes", "true", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "off", "0"})
"""The boolean words (any case), as Circus's ``to_bool``: anything else is an error."""


class OptionError(ValueError):
    """A value an option refuses; ``str()`` says what is wrong, not where."""


def parse_bool(text: str) -> bool:
    """A boolean word: yes/true/on/1 or no/false/off/0, any case."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise OptionError(f"{text!r} is not a boolean; use true or false")


def parse_int(text: str) -> int:
    """A decimal integer."""
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"{text!r} is not an integer") from None


def parse_float(text: str) -> float:
    """A real number (seconds and the like); NaN is refused."""
    try:
        number = float(text)
    except ValueError:
        raise OptionError(f"{text!r} is not a number") from None
    if math.isnan(number):
        raise OptionError(f"{text!r} is not a number")
    return number


def parse_octal(text: str) -> int:
    """An octal number such as ``077``, ``0o77`` or ``0``."""
    digits = text.strip()
    if digits[:2].lower() == "0o":
        digits = digits[2:]
    if not digits or any(char not in "01234567" for char in digits):
        raise OptionError(f"{text!r} is not an octal number such as 022 or 0o022")
    return int(digits, 8)
