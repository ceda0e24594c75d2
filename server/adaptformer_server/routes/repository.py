"""The KServe v2 model-repository extension over the adapter manager: ``POST /v2/repository/index`` lists the
tasks, ``.../models/{task}/load`` pages a task (or ``task@version``) into a bank slot now, ``.../unload`` takes it
out of the bank. Unlike Triton, an unloaded task still answers: the next request pages it in again; tasks are
added, replaced and removed through ``/adapters``. Errors are the protocol's ``{"error": "<message>"}``."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from adaptformer_server.deps import Adapters, AdminAuth, PredictAuth
from adaptformer_server.errors import InvalidInput
from adaptformer_server.routes.oip import OIPRoute

__all__ = ["router"]

router = APIRouter(prefix="/v2/repository", tags=["open inference protocol (v2)"], route_class=OIPRoute)


@router.post("/index", summary="Repository index: every task, its current version and whether it is resident")
async def index(request: Request, _: PredictAuth, adapters: Adapters) -> list[dict]:
    body = await request.body()
    try:
        ready = bool(json.loads(body).get("ready", False)) if body.strip() else False
    except (ValueError, AttributeError, RecursionError):
        raise InvalidInput('the index body is optional JSON: {"ready": true} lists only resident tasks') from None
    listed = []
    for entry in adapters:
        resident = adapters.resident(entry)
        if ready and not resident:
            continue
        reason = "resident in a bank slot" if resident else "in the store; paged in on its next request"
        listed.append({"name": entry.task, "version": entry.version, "state": "READY", "reason": reason})
    return listed


@router.post("/models/{task}/load", summary="Page a task (or task@version) into a bank slot now", responses={404: {}})
async def load(task: str, _: AdminAuth, adapters: Adapters) -> dict:
    await adapters.load(task)
    return {}


@router.post("/models/{task}/unload", summary="Take a task (or task@version) out of the bank", responses={404: {}})
async def unload(task: str, _: AdminAuth, adapters: Adapters) -> dict:
    adapters.unload(task)
    return {}
