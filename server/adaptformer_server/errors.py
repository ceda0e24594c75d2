"""API errors: one exception class per status, and the handlers that turn every error into contract JSON.

Body: ``{"error": {"code": str, "message": str, "check": str (incompatible adapters only)}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from adaptformer.errors import AdapterFormatError, DataError, IncompatibleAdapterError, InputTooLargeError

__all__ = [
    "CLIENT_CLOSED",
    "ApiError",
    "Forbidden",
    "IncompatibleAdapter",
    "InvalidAdapter",
    "InvalidInput",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "as_api_error",
    "error_body",
    "install_error_handlers",
    "status_of",
]

# The client closed the connection before the server could answer (nginx's 499): counted, not a server error.
CLIENT_CLOSED = 499


def error_body(code: str, message: str, check: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if check is not None:
        err["check"] = check
    return {"error": err}


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a message that says what to do."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, check: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.check = check
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.code, self.message, self.check), self.status, headers=self.headers)


class InvalidInput(ApiError):
    status, code = 400, "invalid_input"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class IncompatibleAdapter(ApiError):
    status, code = 409, "incompatible_adapter"


class RequestTimeout(ApiError):
    """The body stalled; the connection is closed after the answer (what is left of the body is never read)."""

    status, code = 408, "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidAdapter(ApiError):
    status, code = 422, "invalid_adapter"


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"


class Overloaded(ApiError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class NotReady(ApiError):
    status, code = 503, "not_ready"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def data_error(e: DataError, what: str = "") -> ApiError:
    """A library DataError as 413 (a limit was exceeded) or 400 (anything else)."""
    message = f"{what}{e}"
    if isinstance(e, InputTooLargeError):
        return PayloadTooLarge(message)
    hint = "" if "PNG" in message else "; send a PNG, JPEG, WebP, GIF, BMP or TIFF image"
    return InvalidInput(message + hint)


@contextmanager
def counted(record: Callable[[str], None], ok: int) -> Iterator[None]:
    """Runs a handler's body and calls ``record(status)`` once with the HTTP status it ends with, for
    status-labelled metrics: ``ok`` when the body completes, else the status :func:`status_of` gives its error."""
    try:
        yield
    except BaseException as e:
        record(str(status_of(e)))
        raise
    record(str(ok))


def as_api_error(exc: BaseException) -> ApiError | None:
    """The one mapping of errors to answers: the API error ``exc`` is answered as (status, code, message), or
    ``None`` for anything unexpected (a bug: 500) and for a client that went away.

    API errors stand for themselves; the library's errors and starlette's multipart errors are the client's
    input or adapter at fault (400, 409, 413, 422).
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DataError):
        return data_error(exc)
    if isinstance(exc, AdapterFormatError):
        return InvalidAdapter(str(exc))
    if isinstance(exc, IncompatibleAdapterError):
        return IncompatibleAdapter(str(exc), check=exc.check)
    if isinstance(exc, MultiPartException):
        if exc.message.startswith("Too many"):
            return PayloadTooLarge(f"{exc.message} (too many multipart parts)")
        if _multipart_too_large(exc):
            return PayloadTooLarge(f"{exc.message} (a text field is too long; send images as file parts)")
        return InvalidInput(f"malformed multipart body: {exc.message}")
    return None


def status_of(exc: BaseException) -> int:
    """The HTTP status the handlers below give ``exc`` (500 for anything unexpected)."""
    err = as_api_error(exc)
    if err is not None:
        return err.status
    if isinstance(exc, ClientDisconnect):
        return CLIENT_CLOSED
    return 500


def _multipart_too_large(exc: MultiPartException) -> bool:
    return exc.message.startswith("Too many") or "exceeded maximum size" in exc.message


def _location(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    return ".".join(loc) or "request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    err = as_api_error(exc)
    assert err is not None
    return err.response()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    parts = [f"{_location(e)}: {e.get('msg', 'invalid')}" for e in errors]
    message = "; ".join(parts) or "invalid request"
    if errors and all(e.get("loc", ("",))[0] == "query" for e in errors):
        # The contract puts bad query values (missing task, top_k < 1...) under 400.
        return JSONResponse(error_body("invalid_input", f"bad query parameter: {message}"), 400)
    return JSONResponse(error_body("validation_error", message), 422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        body = error_body("not_found", f"no route {request.method} {request.url.path}; the API is described at /docs")
    elif exc.status_code == 405:
        body = error_body("method_not_allowed", f"{request.method} is not allowed on {request.url.path}; see /docs")
    else:
        body = error_body("http_error", str(exc.detail))
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Maps API errors, request validation, routing, library and multipart errors to contract JSON."""
    for mapped in (ApiError, DataError, AdapterFormatError, IncompatibleAdapterError, MultiPartException):
        app.add_exception_handler(mapped, _api_error)  # as_api_error
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
