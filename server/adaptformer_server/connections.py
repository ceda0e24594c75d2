"""uvicorn's HTTP protocol with a deadline for a request's headers.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but not one that sends nothing, or half a
request line and headers, and then stalls: each such connection is held forever. Here a connection has
``header_timeout`` seconds, from when it opens and again from the end of each response, to complete the headers
of its next request; otherwise it is closed. (A stalled body is the app's: ``body_limit.BodyLimit``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["http_protocol"]


class _HeaderDeadline:
    """Mixed into uvicorn's h11 or httptools protocol; both start a new ``self.cycle`` when headers complete."""

    header_timeout: float
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        # Armed before the base class runs: it may start the next (pipelined) request's cycle at once.
        self._arm_header_deadline()
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[attr-defined]
        cycle = self.cycle  # type: ignore[attr-defined]
        self._header_deadline = loop.call_later(self.header_timeout, self._header_deadline_passed, cycle)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self, cycle: Any) -> None:
        self._header_deadline = None
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if self.cycle is cycle and not transport.is_closing():  # type: ignore[attr-defined]
            transport.close()  # no request started since the deadline was set


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's protocol class (httptools when installed, h11 otherwise, as uvicorn's "auto") with a header
    deadline; pass it as ``uvicorn.Config(http=...)``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return type(f"HeaderDeadline{base.__name__}", (_HeaderDeadline, base), {"header_timeout": header_timeout})
