"""Host and Origin checks: a web page the user visits must not reach this server through their browser.

Two attacks a keyless loopback server is open to otherwise:

- DNS rebinding: a page on ``evil.example`` makes its own name resolve to 127.0.0.1, then talks to this server
  as if it were its own origin. Its requests carry ``Host: evil.example``; only allowed names pass.
- Cross-site requests: any page may POST a form (multipart, no preflight) to ``http://127.0.0.1:8000``. The
  browser names the page in ``Origin``; a state-changing request whose Origin is not this server's own is refused.

Scripts and command-line clients send no Origin and a Host they connect to, so they are not affected.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import Scope

from adaptformer_server.errors import error_body
from adaptformer_server.settings import Settings

__all__ = ["LOOPBACK_NAMES", "HostOriginCheck", "allowed_hosts"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_ANY = "*"


def allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """The Host names the server answers to: the setting, or loopback names and the bound host (any host when
    bound to every interface, where clients reach it under names it cannot know)."""
    if settings.allowed_hosts:
        return tuple(settings.allowed_hosts)
    bound = settings.host.strip("[]").lower()
    try:
        if ipaddress.ip_address(bound).is_unspecified:
            return (_ANY,)
    except ValueError:
        pass
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, bound)))


def _host_name(value: str) -> str:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` -> the name, lower case, without brackets or a final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern in (_ANY, name):
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class HostOriginCheck:
    """400 ``invalid_host`` for a Host the server does not answer to; 403 ``forbidden`` for a POST, PUT, DELETE or
    PATCH whose Origin is not the server's own (scheme-less comparison of ``host[:port]`` with the Host header) nor
    one of the settings' ``cors_origins``.

    The address a connection arrived at is always an allowed Host (a client that connects to an IP literal
    names it), so is a request without a Host header (HTTP/1.0: not a browser).
    """

    def __init__(self, settings: Settings) -> None:
        self.allowed = allowed_hosts(settings)
        self.cors_origins = frozenset(settings.cors_origins)  # pages the operator lets call the server (CORS)

    def refusal(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        """The answer refusing an HTTP request (``headers``: its headers), or None when it may pass."""
        host = headers.get("host")
        if host is not None and not self._host_ok(_host_name(host), scope):
            message = (
                f"this server does not answer to the host name {host!r} (a guard against DNS rebinding); "
                "connect to it by an allowed name, or add this one to ADAPTFORMER_ALLOWED_HOSTS (--allowed-hosts)"
            )
            return JSONResponse(error_body("invalid_host", message), 400)
        origin = headers.get("origin")
        if origin is not None and scope["method"] in STATE_CHANGING and not self._origin_ok(origin, host):
            message = (
                f"cross-site request refused: {scope['method']} from the web page at Origin {origin!r}, which is "
                "not this server; only the server's own pages (the playground) and clients that send no Origin "
                "(scripts, curl, the Python client) may change state or run predictions"
            )
            return JSONResponse(error_body("forbidden", message), 403)
        return None

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        return _same_origin(origin, host) or origin.strip().lower() in self.cors_origins

    def _host_ok(self, name: str, scope: Scope) -> bool:
        if _matches(name, self.allowed):
            return True
        server = scope.get("server")
        return server is not None and name == str(server[0]).lower().strip("[]")


def _same_origin(origin: str, host: str | None) -> bool:
    if host is None or origin == "null":
        return False
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()
