"""Helpers shared by the test folders (``tests`` is on pytest's ``pythonpath``): ``from support import wait_until``.

Tests synchronise on what they wait for (an event, a metric, an answer), never on a fixed sleep: a condition is
polled until it holds, and only a generous bound turns a wait into a failure that names what was awaited.
"""

from __future__ import annotations

from support.app import serving
from support.wait import DEFAULT_TIMEOUT, async_wait_until, wait_until

__all__ = ["DEFAULT_TIMEOUT", "async_wait_until", "serving", "wait_until"]
