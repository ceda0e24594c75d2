"""Server processes started by benchmarks and tests: a free loopback port, and waiting until /readyz says 200."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx

__all__ = ["free_port", "wait_ready"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str,
    proc: subprocess.Popen,
    *,
    timeout: float = 300,
    interval: float = 0.2,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Polls ``url``/readyz until it answers 200.

    Raises:
        AssertionError: the process exited first, or ``timeout`` seconds passed; the message ends with
            ``output()`` (e.g. the tail of the server's log).
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{output()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"server at {url} not ready after {timeout} s:\n{output()}")
        time.sleep(interval)
