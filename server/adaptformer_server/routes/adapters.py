"""/adapters: list, inspect, upload (replace) and delete task adapters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from adaptformer_server.deps import AdminAuth, PredictAuth, ReadyRuntime
from adaptformer_server.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed, status_of
from adaptformer_server.inputs import media_type, read_form
from adaptformer_server.schemas import AdapterInfo, AdapterList, DeleteResponse, UploadResponse, error_responses

router = APIRouter(prefix="/adapters", tags=["adapters"])

_UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the .safetensors adapter"},
                        "task": {"type": "string", "description": "task name (default: the one in the file)"},
                    },
                }
            }
        },
    }
}


@router.get("", response_model=AdapterList, summary="All tasks, sorted", responses=error_responses(401, 403, 503))
async def list_adapters(_: PredictAuth, runtime: ReadyRuntime) -> dict:
    return {"adapters": [runtime.info(e) for e in runtime.registry]}


@router.get("/{task}", response_model=AdapterInfo, summary="One task", responses=error_responses(401, 403, 404, 503))
async def get_adapter(task: str, _: PredictAuth, runtime: ReadyRuntime) -> dict:
    return runtime.info(runtime.entry(task))


@router.post(
    "",
    status_code=201,
    response_model=UploadResponse,
    summary="Upload or replace a task adapter; servable when this returns",
    responses=error_responses(401, 403, 409, 413, 415, 422, 503),
    openapi_extra=_UPLOAD,
)
async def upload_adapter(request: Request, _: AdminAuth, runtime: ReadyRuntime) -> dict:
    settings = runtime.settings
    status = "500"
    try:
        if media_type(request) != "multipart/form-data":
            raise UnsupportedMediaType(
                "upload the adapter as multipart/form-data with a `file` field: "
                "curl -F file=@cars.safetensors http://HOST/adapters"
            )
        form = await read_form(request, settings.max_parts)
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise ValidationFailed(
                    "the upload needs a file field named `file` holding the .safetensors adapter "
                    "(curl -F file=@cars.safetensors)"
                )
            data = await file.read()
            if len(data) > settings.max_upload_bytes:
                raise PayloadTooLarge(
                    f"the adapter file has {len(data):,} bytes; the limit is {settings.max_upload_bytes:,} "
                    "(ADAPTFORMER_MAX_UPLOAD_BYTES)"
                )
            name = form.get("task")
            if name is not None and not isinstance(name, str):
                raise ValidationFailed("the `task` field must be a plain text field")
        finally:
            await form.close()
        result = await runtime.upload(data, name.strip() if name and name.strip() else None)
        status = "201"
    except Exception as e:
        status = str(status_of(e))
        raise
    finally:
        runtime.metrics.uploads.labels(status).inc()
    return {
        "adapter": runtime.info(result.entry),
        "replaced": result.previous is not None,
        "previous_version": result.previous.version if result.previous else None,
    }


@router.delete(
    "/{task}",
    response_model=DeleteResponse,
    summary="Delete a task; requests in flight finish with it",
    responses=error_responses(401, 403, 404, 503),
)
async def delete_adapter(task: str, _: AdminAuth, runtime: ReadyRuntime) -> dict:
    entry = await runtime.delete(task)
    return {"task": task, "deleted": True, "version": entry.version}
