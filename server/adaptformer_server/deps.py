"""FastAPI dependencies: the services, the runtime, the settings and the auth checks, as typed aliases for
handlers; and the route class of the prediction routes, which checks without dependencies."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute

from adaptformer_server.auth import Auth
from adaptformer_server.repository.split import SESSION_HEADER, enter_caller, leave_caller
from adaptformer_server.runtime import Runtime
from adaptformer_server.services import AdapterManager, InferenceService
from adaptformer_server.settings import Settings

__all__ = [
    "Adapters",
    "AdminAuth",
    "Inference",
    "PredictAuth",
    "PredictRoute",
    "ReadyRuntime",
    "RuntimeDep",
    "SettingsDep",
    "inference_of",
]


# Every dependency is ``async def``: they only read app state, and FastAPI runs a plain ``def`` dependency in a
# worker thread, a hand-off that cost more per request than decoding an image (docs/benchmarks/server_profile.md).
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def ready_runtime(request: Request) -> Runtime:
    """The runtime once it is ready (features that follow its life cycle), or 503 not_ready while it loads."""
    runtime: Runtime = request.app.state.runtime
    runtime.require_ready()
    return runtime


async def ready_adapters(request: Request) -> AdapterManager:
    """The adapter manager, or 503 not_ready while the backbone loads."""
    runtime: Runtime = request.app.state.runtime
    runtime.require_ready()
    return runtime.adapters


async def ready_inference(request: Request) -> InferenceService:
    """The inference service, or 503 not_ready while the backbone loads."""
    runtime: Runtime = request.app.state.runtime
    runtime.require_ready()
    return runtime.inference


async def predict_auth(request: Request) -> None:
    auth: Auth = request.app.state.auth
    auth.check_predict(request)


async def admin_auth(request: Request) -> None:
    auth: Auth = request.app.state.auth
    auth.check_admin(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ReadyRuntime = Annotated[Runtime, Depends(ready_runtime)]
Adapters = Annotated[AdapterManager, Depends(ready_adapters)]
Inference = Annotated[InferenceService, Depends(ready_inference)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PredictAuth = Annotated[None, Depends(predict_auth)]
AdminAuth = Annotated[None, Depends(admin_auth)]


class PredictRoute(APIRoute):
    """A prediction route (``POST /predict``, the ``/v2`` infer routes): the predict key (401/403), then
    readiness (503), checked by direct calls before FastAPI solves the route's parameters: what the
    ``PredictAuth`` and ``Inference`` dependencies did, in that order (a request without its key is 401 whatever
    its query), without solving dependencies per request. The handler takes the service with
    :func:`inference_of`. Those dependencies take only the request, so the OpenAPI schema is the same.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            state = request.app.state
            state.auth.check_predict(request)
            state.runtime.require_ready()
            # the caller a traffic split sees (repository.split): its session key, and whether it named a version
            token = enter_caller(request.headers.get(SESSION_HEADER), "version" in request.path_params)
            try:
                return await handler(request)
            finally:
                leave_caller(token)

        return route


def inference_of(request: Request) -> InferenceService:
    """The inference service of a :class:`PredictRoute`'s request (ready: the route checked)."""
    return request.app.state.runtime.inference
