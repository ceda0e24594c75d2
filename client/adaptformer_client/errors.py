"""Typed exceptions, and ``parse_error`` mapping an error response of the API to one of them.

Every exception carries the server's message (``str(exc)`` is that message), so a caller can show it as is.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AdaptformerClientError",
    "AuthError",
    "ConflictError",
    "IncompatibleAdapterError",
    "InvalidAdapterError",
    "InvalidInputError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ServerError",
    "UnsupportedMediaTypeError",
    "parse_error",
]


class AdaptformerClientError(Exception):
    """Base class of every error this client raises on purpose.

    Attributes:
        status: HTTP status of the response, ``None`` when no response came back.
        code: The server's error code (``not_found``, ``invalid_input``...), ``None`` when it sent none.
        message: The server's message: what is wrong and what to do.
        check: Which compatibility check failed (``fingerprint``, ``shapes``, ``modality``), 409 only.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, check: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.check = check

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class InvalidInputError(AdaptformerClientError):
    """400 (or a 422 ``validation_error``): undecodable image, wrong modality or frame count, bad query values."""


class AuthError(AdaptformerClientError):
    """401: no API key was sent and the server needs one."""


class PermissionDeniedError(AuthError):
    """403: the key is wrong, is a predict key on an admin route, or adapter management is disabled."""


class NotFoundError(AdaptformerClientError):
    """404: unknown task."""


class IncompatibleAdapterError(AdaptformerClientError):
    """409: the adapter does not fit the server's backbone; ``check`` says which check failed."""


class ConflictError(AdaptformerClientError):
    """409 ``conflict``: the request does not fit the current state (no traffic split to promote or abort, a
    version not in the split, a training job that can no longer be cancelled); read the state again, then decide."""


class PayloadTooLargeError(AdaptformerClientError):
    """413: body, image pixels, number of images/frames/parts or upload size over the server's limit."""


class UnsupportedMediaTypeError(AdaptformerClientError):
    """415: the server does not accept this Content-Type."""


class InvalidAdapterError(AdaptformerClientError):
    """422: not a safetensors adapter file, bad or missing metadata, NaN weights or an invalid task name."""


class OverloadedError(AdaptformerClientError):
    """503 (queue full or still loading) or 429, still failing after the client's retries.

    Attributes:
        retry_after: Seconds the server asked to wait (its Retry-After header), ``None`` when it sent none.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(AdaptformerClientError):
    """Any other error status (5xx, or one this client does not know)."""


class APIConnectionError(AdaptformerClientError):
    """The server could not be reached, or the connection broke before a response came back."""


class APITimeoutError(APIConnectionError):
    """No response within the client's timeout."""


_BY_CODE: dict[str, type[AdaptformerClientError]] = {
    "invalid_input": InvalidInputError,
    "validation_error": InvalidInputError,
    "unauthorized": AuthError,
    "forbidden": PermissionDeniedError,
    "not_found": NotFoundError,
    "incompatible_adapter": IncompatibleAdapterError,
    "conflict": ConflictError,
    "payload_too_large": PayloadTooLargeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "invalid_adapter": InvalidAdapterError,
    "overloaded": OverloadedError,
    "not_ready": OverloadedError,
}

_BY_STATUS: dict[int, type[AdaptformerClientError]] = {
    400: InvalidInputError,
    401: AuthError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: IncompatibleAdapterError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidAdapterError,
    429: OverloadedError,
    503: OverloadedError,
}


def _message_of(payload: Any) -> tuple[str | None, str | None, str | None]:
    """(code, message, check) from the contract's error body, or from what a proxy or framework sent instead."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return error.get("code"), error.get("message"), error.get("check")
        if isinstance(error, str):
            return None, error, None
        detail = payload.get("detail")
        if detail is not None:
            return None, detail if isinstance(detail, str) else str(detail), None
        if "status" in payload:  # /readyz answers 503 {"status": "loading"}
            return None, f"server is {payload['status']}", None
    if isinstance(payload, str) and payload.strip():
        return None, payload.strip()[:500], None
    return None, None, None


def parse_error(status: int, payload: Any, *, retry_after: float | None = None) -> AdaptformerClientError:
    """Maps an error response to the typed exception for it.

    The error code in the body decides when known (a 422 ``validation_error`` is an ``InvalidInputError``, not an
    ``InvalidAdapterError``); otherwise the status does.

    Args:
        status: HTTP status code of the response.
        payload: The decoded JSON body, or the text of a body that was not JSON.
        retry_after: Seconds from the Retry-After header, kept on an ``OverloadedError``.
    """
    code, message, check = _message_of(payload)
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError
    if not message:
        message = f"HTTP {status} from the server, with no error message"
    if issubclass(cls, OverloadedError):
        return cls(message, status=status, code=code, check=check, retry_after=retry_after)
    return cls(message, status=status, code=code, check=check)
