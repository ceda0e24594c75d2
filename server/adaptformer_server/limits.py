"""Request body limits: the size, checked on Content-Length before reading and again on every chunk received, and
the longest wait for the next chunk (a stalled body must not hold a connection and a handler forever)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptformer_server.errors import PayloadTooLarge, RequestTimeout, error_body

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """Answers 413 as soon as a body is known to exceed its route's limit, and 408 (then closes the connection)
    when the next piece of a body takes longer than ``body_timeout`` to arrive.

    Args:
        app: The wrapped ASGI app.
        limit_for: Gives the byte limit for a request scope (method and path).
        body_timeout: Longest wait in seconds for the next body chunk (None: no limit).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int], body_timeout: float | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await JSONResponse(error_body("invalid_input", "Content-Length is not a number"), 400)(
                    scope, receive, send
                )
                return
            if size > limit:
                message = _message(size, limit)
                await JSONResponse(error_body("payload_too_large", message), 413)(scope, receive, send)
                return
        received = 0
        more_body = True
        timeout = self.body_timeout

        async def counting_receive() -> Message:
            nonlocal received, more_body
            if not more_body or timeout is None:  # after the body: waiting for a disconnect is not a stall
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"the request body stalled: nothing arrived for {timeout:g} s after {received:,} bytes; "
                    "the connection is closed (send the whole body without pausing)"
                ) from None
            if message["type"] == "http.request":
                more_body = message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(_message(received, limit, streaming=True))
            return message

        await self.app(scope, counting_receive, send)


def _message(size: int, limit: int, streaming: bool = False) -> str:
    got = f"more than {limit:,} bytes were sent" if streaming else f"the body has {size:,} bytes"
    return f"request body too large: {got}; the limit is {limit:,} bytes (send fewer or smaller files)"
