"""Records: plain classes whose ``__slots__`` are their fields, compared and shown by them.

What a frozen dataclass gives, for the modules the broker imports: the broker
keeps every module it imports for as long as it holds the sockets, and
dataclasses brings inspect, ast, dis and tokenize (1.4 MiB of its memory). A
record lists its fields in ``__slots__`` and sets each one in its own
``__init__`` (its signature is the record's, for readers and type checkers);
nothing sets them afterwards. ``replace`` is ``dataclasses.replace``.
``tests/test_package_boundaries.py`` keeps dataclasses out of the broker.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    R = TypeVar("R", bound="Record")


class Record:
    """Equal to a record of the same class with equal fields; hashed and shown by its fields."""

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in ``__slots__`` order."""
        return {name: getattr(self, name) for name in self.__slots__}

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"{type(self).__name__}({fields})"


def replace(record: R, **changes: Any) -> R:
    """A copy of ``record`` with ``changes`` (by field name), built by its class's ``__init__``."""
    return type(record)(**{**record.as_dict(), **changes})
