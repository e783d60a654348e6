"""Tests for chapiteau.protocol.signals."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chapiteau.protocol.signals import SignalError, parse_signal


@pytest.mark.parametrize("value", [15, "15", " 15 ", "TERM", "SIGTERM", "term", "sigterm", "Term"])
def test_spellings_of_sigterm(value: int | str) -> None:
    assert parse_signal(value) == signal.SIGTERM


def test_realtime_offset_above_rtmin() -> None:
    assert parse_signal("SIGRTMIN+1") == signal.SIGRTMIN + 1


def test_realtime_offset_below_rtmax_without_prefix() -> None:
    assert parse_signal("rtmax-2") == signal.SIGRTMAX - 2


@pytest.mark.parametrize("value", ["NOPE", "SIGNOPE", "SIG_DFL", "", "TERM+", 0, 999, "-1", True])
def test_non_signals_are_rejected(value: int | str) -> None:
    with pytest.raises(SignalError):
        parse_signal(value)


def test_error_is_a_value_error_naming_the_value() -> None:
    with pytest.raises(ValueError, match="'BOGUS'"):
        parse_signal("BOGUS")


@given(st.sampled_from(list(signal.Signals)))
def test_every_named_signal_is_understood_by_its_name(member: signal.Signals) -> None:
    assert parse_signal(member.name) == int(member)


def test_alias_names_are_accepted() -> None:
    assert parse_signal("IOT") == signal.SIGABRT
