"""FastAPI dependencies: the services, the runtime, the settings and the auth checks, as typed aliases for
handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from adaptformer_server.auth import Auth
from adaptformer_server.runtime import Runtime
from adaptformer_server.services import AdapterManager, InferenceService
from adaptformer_server.settings import Settings

__all__ = ["Adapters", "AdminAuth", "Inference", "PredictAuth", "ReadyRuntime", "RuntimeDep", "SettingsDep"]


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
