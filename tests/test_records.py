"""protocol/records.py: what a frozen dataclass gave the broker's classes, without dataclasses."""

from __future__ import annotations

import pytest

from chapiteau.protocol.broker_messages import Error, Ok, Shutdown, Welcome
from chapiteau.protocol.records import Record, replace


class Point(Record):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int = 0) -> None:
        self.x = x
        self.y = y


def test_records_of_one_class_are_equal_by_their_fields_and_hash_alike():
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(2, 1)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(1)}) == 2


def test_records_of_other_classes_differ_even_with_no_field():
    assert Ok() != Shutdown()
    assert Ok() == Ok()
    assert Point(1, 2) != (1, 2)


def test_the_fields_in_order_repr_and_replace():
    point = Point(1, 2)
    assert point.as_dict() == {"x": 1, "y": 2}
    assert list(Welcome(1, 42).as_dict()) == ["version", "broker_pid"]
    assert repr(point) == "Point(x=1, y=2)"
    assert replace(point, y=5) == Point(1, 5)
    assert point == Point(1, 2)


def test_replace_goes_through_init():
    # Error caps its reason in __init__: a copy is capped too.
    assert len(replace(Error("bad_message"), reason="x" * 10_000).reason) == 4096
    with pytest.raises(TypeError):
        replace(Point(1), z=3)


def test_a_record_has_no_other_attribute():
    with pytest.raises(AttributeError):
        Point(1).z = 3  # type: ignore[attr-defined]
