"""Wait for a condition, bounded in time: the one polling helper of tests/ and integration/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 15.0
"""An upper bound only: a passing test waits for its condition, never this long."""


def wait_until(
    condition: Callable[[], T],
    timeout: float = TIMEOUT,
    *,
    what: str = "the condition",
    interval: float = 0.01,
) -> T:
    """Poll ``condition`` every ``interval`` s until it returns a true value, and return that.

    AssertionError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


async def wait_until_async(
    condition: Callable[[], object], timeout: float = TIMEOUT, *, what: str = "the condition"
) -> None:
    """`wait_until` for a coroutine: the event loop runs while it polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
