"""The body limits of the middleware: the size, checked on Content-Length before reading and again on every chunk
received, and the longest wait for the next chunk (a stalled body must not hold a connection and a handler
forever). What a body may hold once read is :class:`~adaptformer_server.limits.Limits`."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope

from adaptformer_server.errors import PayloadTooLarge, RequestTimeout, error_body

if TYPE_CHECKING:
    from adaptformer_server.settings import Settings

__all__ = ["BodyLimit"]

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})  # methods whose bodies are not limited (nor read)
_MULTIPART_SLACK = 1024 * 1024  # form framing and the `task` field around an uploaded file
_TRAIN_PATH = re.compile(r"/tasks/[^/]+/train/?")


if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[Message], seconds: float) -> Message:
        """``awaitable``'s result, or TimeoutError after ``seconds``: ``asyncio.timeout`` runs it in this task,
        where ``wait_for`` (before 3.12) makes a task of it, for every chunk of every body."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10
    _within = asyncio.wait_for


class BodyLimit:
    """Answers 413 as soon as a body is known to exceed its route's limit, and 408 (then closes the connection)
    when the next piece of a body takes longer than ``body_timeout`` to arrive.

    Args:
        limit_for: Gives the byte limit for a request scope (method and path).
        body_timeout: Longest wait in seconds for the next body chunk (None: no limit).
    """

    def __init__(self, limit_for: Callable[[Scope], int], body_timeout: float | None = None) -> None:
        self.limit_for = limit_for
        self.body_timeout = body_timeout

    @classmethod
    def of(cls, settings: Settings) -> BodyLimit:
        """The server's limits: an adapter upload ``max_upload_bytes``, training examples ``max_examples_bytes``
        (each with room for the form around the file), any other body ``max_body_bytes``; ``body_timeout``."""

        def limit_for(scope: Scope) -> int:
            if scope["method"] == "POST" and scope["path"].rstrip("/") == "/adapters":
                return settings.max_upload_bytes + _MULTIPART_SLACK
            if scope["method"] == "POST" and _TRAIN_PATH.fullmatch(scope["path"]):
                return settings.max_examples_bytes + _MULTIPART_SLACK
            return settings.max_body_bytes

        return cls(limit_for, body_timeout=settings.body_timeout)

    def guard(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, Receive]:
        """For an HTTP request: the answer refusing it on its Content-Length (400 not a number, 413 too large) or
        None, and the ``receive`` to read its body with (counting the bytes against the limit, and timing each
        wait: they raise :class:`PayloadTooLarge` and :class:`RequestTimeout`)."""
        if scope["method"] in _NO_BODY:
            return None, receive
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return JSONResponse(error_body("invalid_input", "Content-Length is not a number"), 400), receive
            if size > limit:
                return JSONResponse(error_body("payload_too_large", _message(size, limit)), 413), receive
        received = 0
        more_body = True
        timeout = self.body_timeout

        async def counting_receive() -> Message:
            nonlocal received, more_body
            if not more_body or timeout is None:  # after the body: waiting for a disconnect is not a stall
                return await receive()
            try:
                message = await _within(receive(), timeout)
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

        return None, counting_receive


def _message(size: int, limit: int, streaming: bool = False) -> str:
    got = f"more than {limit:,} bytes were sent" if streaming else f"the body has {size:,} bytes"
    return f"request body too large: {got}; the limit is {limit:,} bytes (send fewer or smaller files)"
