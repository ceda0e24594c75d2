"""The app's one middleware: every per-request effect that wraps the routes, in one ASGI call with one wrapper of
``send`` (six layers, each wrapping ``send``, cost about a sixth of a small request: docs/benchmarks/server_profile.md).

The effects, outermost first:

1. the request id (``observability.py``): taken or made, bound to log lines, named in ``X-Request-ID`` on every
   answer;
2. CORS (``observability.cors_policy``, when origins are configured): preflights to an allowed Host are answered
   here (with the request id, nothing else below applies to them); the other answers get the CORS headers;
3. ``X-AdaptFormer-Replica``: the process that answered;
4. metrics: every request below, counted and timed with the status it ends with (the catch-all's included);
5. the catch-all: a client gone before the answer is 499, a bug a logged JSON 500;
6. the Host and Origin checks (``hosts.py``): a preflight to a foreign Host is refused here, as any request;
7. the body limits (``body_limit.py``): 400/413 on Content-Length, then the size and stall checks of the body read.
"""

from __future__ import annotations

import logging
from time import perf_counter

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptformer_server.body_limit import BodyLimit
from adaptformer_server.errors import CLIENT_CLOSED, error_body
from adaptformer_server.hosts import HostOriginCheck
from adaptformer_server.metrics import Metrics
from adaptformer_server.observability import (
    REQUEST_ID_HEADER,
    add_cors_headers,
    enter_request,
    leave_request,
    request_id_from,
)

__all__ = ["REPLICA_HEADER", "ServingMiddleware"]

REPLICA_HEADER = "X-AdaptFormer-Replica"

log = logging.getLogger("adaptformer_server")


class ServingMiddleware:
    """What wraps every HTTP request (the module docstring lists it, in order); other scopes pass untouched.

    Args:
        app: The app (its exception handlers and routes).
        metrics: Where requests are counted and timed.
        replica_id: Named in ``X-AdaptFormer-Replica``.
        hosts: The Host and Origin checks.
        body_limit: The body limits.
        cors: The CORS policy, or None for none.
        echo_request_id: Whether to name the request id in responses (not in a Ray Serve replica, whose proxy does).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        replica_id: str,
        hosts: HostOriginCheck,
        body_limit: BodyLimit,
        cors: CORSMiddleware | None = None,
        echo_request_id: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.replica_id = replica_id
        self.hosts = hosts
        self.body_limit = body_limit
        self.cors = cors
        self.echo = echo_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER))
        token = enter_request(request_id)
        try:
            cors = self.cors
            origin = headers.get("origin") if cors is not None else None
            refusal = self.hosts.refusal(scope, headers)  # before a preflight too: a foreign Host learns nothing
            if (
                refusal is None
                and cors is not None
                and origin is not None
                and scope["method"] == "OPTIONS"
                and "access-control-request-method" in headers
            ):
                preflight = cors.preflight_response(request_headers=headers)
                if self.echo:
                    preflight.headers[REQUEST_ID_HEADER] = request_id
                await preflight(scope, receive, send)
                return
            await self._handle(scope, receive, send, request_id, origin, refusal)
        finally:
            leave_request(token)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        origin: str | None,
        refusal: JSONResponse | None,
    ) -> None:
        """Everything below the CORS preflight: the answer's headers, metrics, catch-all, the Host and Origin
        checks' ``refusal`` (None: the request passed them), the body limits, the app."""
        cors, replica_id, echo = self.cors, self.replica_id, self.echo
        start = perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                out = MutableHeaders(scope=message)
                out[REPLICA_HEADER] = replica_id
                if cors is not None:
                    add_cors_headers(cors, out, origin)
                if echo:
                    out[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            body_receive = receive
            if refusal is None:
                refusal, body_receive = self.body_limit.guard(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
            else:
                await self.app(scope, body_receive, send_wrapper)
        except ClientDisconnect:
            log.debug("client closed the connection during %s %s", scope.get("method"), scope.get("path"))
            if not started:
                body = error_body("client_closed_request", "the client closed the connection before the answer")
                await JSONResponse(body, CLIENT_CLOSED)(scope, receive, send_wrapper)
        except Exception:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = error_body("internal_error", "internal server error (a bug); the server log has the details")
            await JSONResponse(body, 500)(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(scope, status, perf_counter() - start)
