"""Request ids, log lines and CORS: what an operator reads in the logs, and which web pages may call the server.

- ``X-Request-ID``: taken from the request when sane (1 to 128 visible ASCII characters, no spaces or control
  characters, so it cannot forge or split a log line), otherwise made (32 hex digits); echoed in every response
  and carried by every log line written while the request is handled (a context variable, copied into worker
  threads by ``asyncio.to_thread``). In a Ray Serve replica, Ray's proxy makes the id and sets the header.
- Log lines: text (``time LEVEL logger [request id]: message``) or JSON objects, one per line.
- CORS: the rules of Starlette's ``CORSMiddleware`` for the origins the settings list; none by default.

The app's one middleware (``middleware.py``) applies all of it per request.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Sequence
from contextvars import ContextVar, Token
from datetime import datetime, timezone

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from adaptformer_server.routes.oip import HEADER_LENGTH
from adaptformer_server.settings import Settings

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestIdFilter",
    "TextFormatter",
    "add_cors_headers",
    "configure_logging",
    "cors_policy",
    "current_request_id",
    "echo_request_ids",
    "enter_request",
    "leave_request",
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


def enter_request(request_id: str) -> Token[str | None]:
    """Makes ``request_id`` the id of this task's log lines until :func:`leave_request` (the token)."""
    return _request_id.set(request_id)


def leave_request(token: Token[str | None]) -> None:
    _request_id.reset(token)


def echo_request_ids() -> bool:
    """Whether the app names the request id in its responses: not in a Ray Serve replica, whose proxy makes the
    id (passing it in the request header, where this app takes it) and appends ``X-Request-ID`` to every
    response itself (a second header would follow)."""
    serve = sys.modules.get("ray.serve")
    if serve is None:
        return True
    try:
        serve.get_replica_context()
    except Exception:
        return True
    return False


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


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover - never called
    raise RuntimeError("the CORS policy answers preflights and sets headers; it wraps no app")


def cors_policy(settings: Settings, expose_headers: Sequence[str] = ()) -> CORSMiddleware | None:
    """Starlette's CORS rules for the origins the settings list (None when there are none), used for its answers
    to preflights and its headers (:func:`add_cors_headers`), not as a layer of its own.

    Args:
        settings: The settings (``cors_origins``).
        expose_headers: Response headers a cross-origin page may read, besides the request id and Retry-After.
    """
    if not settings.cors_origins:
        return None
    # No credentials mode: keys travel in Authorization/X-API-Key, which a page sends explicitly.
    return CORSMiddleware(
        _no_app,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "HEAD", "POST", "DELETE"],
        allow_headers=["Authorization", "X-API-Key", REQUEST_ID_HEADER, HEADER_LENGTH],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After", HEADER_LENGTH, *expose_headers],
        max_age=600,
    )


def add_cors_headers(cors: CORSMiddleware, headers: MutableHeaders, origin: str | None) -> None:
    """The headers ``CORSMiddleware.send`` adds to an answer that is not a preflight's, for a request whose
    ``Origin`` is ``origin`` (None: it has none), in the same order."""
    explicit = False
    if origin is not None:
        headers.update(cors.simple_headers)
        # Credentials need the page's own origin instead of `*`; listed origins are mirrored back.
        explicit = cors.allow_credentials if cors.allow_all_origins else cors.is_allowed_origin(origin=origin)
    if origin is not None and explicit:
        cors.allow_explicit_origin(headers, origin)
    else:
        headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
