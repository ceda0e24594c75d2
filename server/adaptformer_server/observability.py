"""Request ids, log lines and CORS: what an operator reads in the logs, and which web pages may call the server.

- ``X-Request-ID``: taken from the request when sane (1 to 128 visible ASCII characters, no spaces or control
  characters, so it cannot forge or split a log line), otherwise made (32 hex digits); echoed in every response
  and carried by every log line written while the request is handled (a context variable, copied into worker
  threads by ``asyncio.to_thread``). In a Ray Serve replica, Ray's proxy makes the id and sets the header.
- Log lines: text (``time LEVEL logger [request id]: message``) or JSON objects, one per line.
- CORS: Starlette's ``CORSMiddleware`` for the origins the settings list; none by default.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import datetime, timezone

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptformer_server.routes.oip import HEADER_LENGTH
from adaptformer_server.settings import Settings

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "TextFormatter",
    "configure_logging",
    "current_request_id",
    "install_observability",
    "request_id_from",
]

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_SANE_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

_request_id: ContextVar[str | None] = ContextVar("adaptformer_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _request_id.get()


def bind_request_id(value: str | None) -> None:
    """Makes ``value`` the request id of this task's log lines (the engine process, for a front's request)."""
    _request_id.set(value)


def request_id_from(value: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if value is not None and _SANE_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def _in_ray_replica() -> bool:
    """Whether this app runs in a Ray Serve replica, whose proxy makes the id (passing it in the request header,
    where this app takes it) and appends ``X-Request-ID`` to every response itself."""
    serve = sys.modules.get("ray.serve")
    if serve is None:
        return False
    try:
        serve.get_replica_context()
    except Exception:
        return False
    return True


class RequestIdMiddleware:
    """Gives every HTTP request an id (see the module docstring) and names it in the ``X-Request-ID`` response
    header. Installed outermost, so even the answers of the other middleware carry it.

    Args:
        app: The app.
        echo: Whether to set the response header (not in a Ray Serve replica: a second header would follow).
    """

    def __init__(self, app: ASGIApp, echo: bool = True) -> None:
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and self.echo:
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` (None outside a request) so any formatter can show it; add it to a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


def _record_id(record: logging.LogRecord) -> str | None:
    return getattr(record, "request_id", None) or _request_id.get()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id]: message``; ``[-]`` outside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return TEXT_FORMAT % dict(record.__dict__, request_id=_record_id(record) or "-")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id`` (in a
    request), ``exception`` (with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _record_id(record)
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(settings: Settings) -> None:
    """One stderr handler on the root logger with the settings' level and format, request ids included.

    Uvicorn's loggers reach it too when uvicorn is run with ``log_config=None``.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def install_observability(app: FastAPI, settings: Settings, expose_headers: Sequence[str] = ()) -> None:
    """Adds CORS (when origins are configured) and the request id around every other middleware: call it last.

    Args:
        app: The app.
        settings: Its settings (``cors_origins``).
        expose_headers: Response headers a cross-origin page may read, besides the request id and Retry-After.
    """
    if settings.cors_origins:
        # No credentials mode: keys travel in Authorization/X-API-Key, which a page sends explicitly.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", REQUEST_ID_HEADER, HEADER_LENGTH],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", HEADER_LENGTH, *expose_headers],
            max_age=600,
        )
    app.add_middleware(RequestIdMiddleware, echo=not _in_ray_replica())
