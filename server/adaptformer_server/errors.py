"""API errors: one exception class per status, the serving layer's own errors, and the one mapping of every error
to contract JSON.

Body: ``{"error": {"code": str, "message": str, "check": str (incompatible adapters only)}}``.

The inference service and the batcher raise :class:`ServingError` subclasses, in their own terms (a task, a
version, a count); the status and the route to call instead are written here, in :func:`as_api_error`, as they are
for the library's errors and Starlette's multipart errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from adaptformer.errors import AdapterFormatError, DataError, IncompatibleAdapterError, InputTooLargeError
from adaptformer_server.repository.names import TASK_PATTERN

__all__ = [
    "CLIENT_CLOSED",
    "ApiError",
    "Conflict",
    "Forbidden",
    "IncompatibleAdapter",
    "InvalidAdapter",
    "InvalidInput",
    "InvalidTaskName",
    "NoTaskNamed",
    "NoTaskToServe",
    "NonFiniteScores",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServingError",
    "TooManySamples",
    "Unauthorized",
    "UnknownVersion",
    "UnsupportedMediaType",
    "ValidationFailed",
    "VersionReplaced",
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
    """An error with an HTTP status, a stable code and a message that says what to do.

    Attributes:
        fixed_headers: Headers every answer of the class carries (``headers`` adds to them).
    """

    status: int = 500
    code: str = "internal_error"
    fixed_headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, *, check: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.check = check
        self.headers = {**self.fixed_headers, **(headers or {})}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.code, self.message, self.check), self.status, headers=self.headers)


class InvalidInput(ApiError):
    """A request the server cannot read: an undecodable image, the wrong modality or frame count, bad query values."""

    status, code = 400, "invalid_input"


class Unauthorized(ApiError):
    """No API key where the route needs one."""

    status, code = 401, "unauthorized"
    fixed_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    """A wrong key, a predict key on an admin route, or adapter management switched off."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    """No such task, version, job or route."""

    status, code = 404, "not_found"


class Conflict(ApiError):
    """A change that does not fit the current state: a job that can no longer be cancelled, a split with no version
    to promote or abort."""

    status, code = 409, "conflict"


class IncompatibleAdapter(ApiError):
    """An adapter that does not fit the served backbone; ``check`` names the check it failed."""

    status, code = 409, "incompatible_adapter"


class RequestTimeout(ApiError):
    """The body stalled; the connection is closed after the answer (what is left of the body is never read)."""

    status, code = 408, "request_timeout"
    fixed_headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class PayloadTooLarge(ApiError):
    """A body, image, frame count, part count or upload over the server's limits."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    """A Content-Type the route does not take."""

    status, code = 415, "unsupported_media_type"


class InvalidAdapter(ApiError):
    """Not an adapter file: not safetensors, bad or missing metadata, non-finite weights."""

    status, code = 422, "invalid_adapter"


class ValidationFailed(ApiError):
    """A request document (JSON body or query) that fails its schema."""

    status, code = 422, "validation_error"


class _RetryLater(ApiError):
    """A 503 that says when to try again: ``Retry-After`` seconds (the class's ``retry_after`` by default)."""

    status = 503
    retry_after = 1

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        seconds = self.retry_after if retry_after is None else retry_after
        super().__init__(message, headers={"Retry-After": str(seconds)})


class Overloaded(_RetryLater):
    """The queue is full: try again in a second."""

    code = "overloaded"


class NotReady(_RetryLater):
    """The server is still loading its backbone or adapters."""

    code, retry_after = "not_ready", 5


# -- the serving layer's errors ---------------------------------------------------------------------------------
class ServingError(Exception):
    """A prediction the inference service or the batcher refuses, said in their terms: no status, no route."""


class InvalidTaskName(ServingError):
    """A name that can never be a task (a ``task@version`` with a malformed version included)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is not a valid task name")
        self.name = name


class NoTaskNamed(ServingError):
    """A request that names no task."""

    def __init__(self) -> None:
        super().__init__("the request names no task")


class UnknownVersion(ServingError):
    """A request that requires a version of a task other than the one served."""

    def __init__(self, task: str, version: str, served: str) -> None:
        super().__init__(f"model {task!r} has no version {version!r}: this server serves version {served}")
        self.task, self.version, self.served = task, version, served


class VersionReplaced(ServingError):
    """The version a request requires was replaced while the request was admitted."""

    def __init__(self, task: str, version: str) -> None:
        super().__init__(f"model {task!r} version {version!r} was replaced while this request was admitted")
        self.task, self.version = task, version


class NoTaskToServe(ServingError):
    """``*`` (every image task) stands for no task: the server has none, or (``servable``) none it can serve now."""

    def __init__(self, servable: bool = False) -> None:
        what = "none can be served now" if servable else "this server has none"
        super().__init__(f"task=* asks for every image task, but {what}")
        self.servable = servable


class TooManySamples(ServingError):
    """A request of several tasks needs more samples than the queue holds at most."""

    def __init__(self, samples: int, tasks: int, queue_size: int) -> None:
        super().__init__(
            f"this request needs {samples} samples ({tasks} tasks); the queue holds at most {queue_size}: ask for "
            "fewer tasks or send fewer images"
        )


class NonFiniteScores(ServingError):
    """An adapter whose scores for an input are not finite (NaN or infinity): finite weights that overflow."""

    def __init__(self, key: str) -> None:
        super().__init__(f"adapter {key} produced non-finite scores (NaN or infinity) for this input")
        self.key = key


def _serving_answer(exc: ServingError) -> ApiError:
    """The answer to a serving error: its status, and what to call or send instead."""
    if isinstance(exc, InvalidTaskName):
        return InvalidInput(
            f"task {exc.name!r} is not a valid task name ({TASK_PATTERN}, no '..'), optionally followed by "
            "@<version> (12 hex digits, as GET /adapters/{task}/versions lists them)"
        )
    if isinstance(exc, NoTaskNamed):
        return InvalidInput("the query needs a `task` (repeat it for several tasks, or task=* for every image task)")
    if isinstance(exc, UnknownVersion):
        return NotFound(f"{exc} (GET /v2/models/{exc.task} lists it)")
    if isinstance(exc, NoTaskToServe):
        return NotFound(f"{exc}; GET /adapters lists them")
    if isinstance(exc, VersionReplaced):
        return NotFound(str(exc))
    if isinstance(exc, TooManySamples):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, NonFiniteScores):
        return InvalidAdapter(f"{exc}; its weights overflow: upload a fixed adapter with POST /adapters")
    return ApiError(str(exc))


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

    API errors stand for themselves; the serving layer's errors, the library's errors and Starlette's multipart
    errors are the client's input or adapter at fault (400, 404, 409, 413, 422).
    """
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.__context__, MultiPartException):
        exc = exc.__context__  # Request.form() raises starlette's multipart errors again as 400s
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ServingError):
        return _serving_answer(exc)
    if isinstance(exc, DataError):
        return data_error(exc)
    if isinstance(exc, AdapterFormatError):
        return InvalidAdapter(str(exc))
    if isinstance(exc, IncompatibleAdapterError):
        return IncompatibleAdapter(str(exc), check=exc.check)
    if isinstance(exc, MultiPartException):
        if exc.message.startswith("Too many"):
            return PayloadTooLarge(f"{exc.message} (too many multipart parts)")
        if "exceeded maximum size" in exc.message:
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
    err = as_api_error(exc)  # a multipart body Request.form() refused
    if err is not None:
        return err.response()
    if exc.status_code == 404:
        body = error_body("not_found", f"no route {request.method} {request.url.path}; the API is described at /docs")
    elif exc.status_code == 405:
        body = error_body("method_not_allowed", f"{request.method} is not allowed on {request.url.path}; see /docs")
    else:
        body = error_body("http_error", str(exc.detail))
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Maps API errors, the serving layer's errors, request validation, routing, library and multipart errors to
    contract JSON."""
    for mapped in (ApiError, ServingError, DataError, AdapterFormatError, IncompatibleAdapterError, MultiPartException):
        app.add_exception_handler(mapped, _api_error)  # as_api_error
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
