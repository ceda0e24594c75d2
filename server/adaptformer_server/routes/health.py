"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from adaptformer_server.deps import RuntimeDep
from adaptformer_server.metrics import CONTENT_TYPE_LATEST
from adaptformer_server.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: the backbone is loaded and the registry built",
    responses={503: {"model": Ready, "description": "still loading (or failed to load)"}},
)
async def readyz(runtime: RuntimeDep) -> Response | dict:
    if runtime.ready and runtime.backbone is not None:
        return {
            "status": "ready",
            "backbone": runtime.backbone.name,
            "fingerprint": runtime.backbone.fingerprint,
            "adapters": len(runtime.adapters.registry),
        }
    body: dict = {"status": runtime.state}
    if runtime.error:
        body["error"] = runtime.error
    return JSONResponse(body, 503, headers={"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
