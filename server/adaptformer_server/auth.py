"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from adaptformer_server.errors import Forbidden, Unauthorized
from adaptformer_server.settings import Settings

__all__ = ["Auth", "presented_key"]


def presented_key(request: Request) -> str | None:
    """The key a request carries, if any."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def _matches(key: str, candidates: list[bytes]) -> bool:
    # Compare against every candidate so the time taken does not say which one (or whether any) matched.
    given = key.encode()
    found = False
    for c in candidates:
        found |= hmac.compare_digest(given, c)
    return found


class Auth:
    """Checks the predict and admin keys the settings configure (see docs/API_CONTRACT.md)."""

    def __init__(self, settings: Settings) -> None:
        self._predict = [k.get_secret_value().encode() for k in settings.api_keys]
        self._admin = [settings.admin_key.get_secret_value().encode()] if settings.admin_key else []
        # Admin routes are open only where nothing is configured and nothing but this machine can connect: once
        # any key is set, an operator has asked for access control, and an admin route without its key would be
        # the one door left open (a predict key holder, or anyone on loopback, could replace or delete tasks).
        self._admin_open = not self._admin and not self._predict and settings.loopback
        self._admin_refusal = (
            "adapter management is disabled: set ADAPTFORMER_ADMIN_KEY (API keys are configured, so admin routes "
            "need the admin key)"
            if self._predict
            else "adapter management is disabled: set ADAPTFORMER_ADMIN_KEY (the server binds to a non-loopback "
            "address, so admin routes need a key)"
        )

    def check_predict(self, request: Request) -> None:
        """/predict and GET /adapters: open unless predict keys are configured; the admin key works too."""
        if not self._predict:
            return
        key = presented_key(request)
        if key is None:
            raise Unauthorized("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        if not _matches(key, self._predict + self._admin):
            raise Forbidden("the API key is not valid for this server")

    def check_admin(self, request: Request) -> None:
        """POST and DELETE /adapters: the admin key; without one, open only on a loopback server with no keys."""
        if not self._admin:
            if self._admin_open:
                return
            raise Forbidden(self._admin_refusal)
        key = presented_key(request)
        if key is None:
            raise Unauthorized("this route needs the admin key: send `Authorization: Bearer <admin key>`")
        if not _matches(key, self._admin):
            raise Forbidden("this route needs the admin key; the key sent is not it")
