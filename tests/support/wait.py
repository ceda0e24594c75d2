"""Bounded waits: poll a condition until it holds; fail, naming what was awaited, after a generous timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DEFAULT_TIMEOUT", "async_wait_until", "wait_until"]

T = TypeVar("T")

# Long enough that only a real failure reaches it on a loaded 2-core machine; a passing wait returns at once.
DEFAULT_TIMEOUT = 60.0


def wait_until(condition: Callable[[], T], what: str, *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02) -> T:
    """Calls ``condition`` until it returns something true, and returns that.

    Args:
        condition: Checked at once, then every ``interval`` seconds.
        what: What is awaited, for the failure message.
        timeout: Seconds before the wait fails with an AssertionError.
        interval: Seconds between checks.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {result!r})")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], Awaitable[T]], what: str, *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02
) -> T:
    """:func:`wait_until` for a coroutine function, sleeping with asyncio between checks."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {result!r})")
        await asyncio.sleep(interval)
